"""The Triton kernel: per-row statistics and the logits' gradient in one launch (imports triton).

One program per row of ``(N, K)`` logits ``z``. The first loop over the row keeps an online maximum
``m`` and ``s = sum exp(z - m)`` (rescaled whenever ``m`` grows) and ``sz = sum u_c z_c``; it stores
``lse = m + log s``, ``zy = z_y`` and ``sz`` for :func:`labelsmooth._stats.loss_from_stats`. If asked,
a second loop writes the gradient

    g_k = r (a exp(z_k - lse) - c u_k [dense smoothing] - b [k = y]),   a = b + c U + 2 zl e lse

(``a`` is :func:`labelsmooth._stats.grad_row_scale`), computed in fp32 (fp64 for fp64 logits) and
rounded once to the output's dtype, so the target entry is corrected before rounding. The output may
be the logits themselves (in-place backward). Rows with ``b = c = e = 0`` (ignored) are not read: their
statistics and gradient are written as zeros.

On CPU tensors the kernel runs only under Triton's interpreter (``TRITON_INTERPRET=1`` set before
``triton`` is first imported).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._stats import RowCoefficients


@triton.jit
def _ce_rows_kernel(
    z_ptr, z_stride, g_ptr, g_stride, y_ptr, b_ptr, c_ptr, e_ptr, r_ptr, u_ptr,
    lse_ptr, zy_ptr, sz_ptr, params_ptr,
    K,
    HAS_U: tl.constexpr, WRITE_GRAD: tl.constexpr, DENSE_SMOOTH: tl.constexpr,
    ACC_FP64: tl.constexpr, BLOCK: tl.constexpr,
):
    acc_ty = tl.float64 if ACC_FP64 else tl.float32
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    z_row = z_ptr + row * z_stride
    b = tl.load(b_ptr + row).to(acc_ty)
    c = tl.load(c_ptr + row).to(acc_ty)
    e = tl.load(e_ptr + row).to(acc_ty)
    y = tl.load(y_ptr + row).to(tl.int64)
    live = (b != 0) | (c != 0) | (e != 0)
    if live:
        m = tl.full([], float("-inf"), acc_ty)
        s = tl.zeros([], acc_ty)
        sz = tl.zeros([], acc_ty)
        for start in range(0, K, BLOCK):
            cols = start + offs
            mask = cols < K
            z = tl.load(z_row + cols, mask=mask, other=float("-inf")).to(acc_ty)
            m_new = tl.maximum(m, tl.max(z, 0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new).to(acc_ty)
            s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(z - m_safe), 0)
            m = m_new
            z_in = tl.where(mask, z, 0.0)
            if HAS_U:
                u = tl.load(u_ptr + cols, mask=mask, other=0.0).to(acc_ty)
                sz += tl.sum(tl.where(u != 0, u * z_in, 0.0), 0)
            else:
                sz += tl.sum(z_in, 0)
        lse = m + tl.log(s)
        y_ok = (y >= 0) & (y < K)
        zy = tl.load(z_row + tl.where(y_ok, y, 0)).to(acc_ty)
        zy = tl.where(y_ok, zy, 0.0)
        tl.store(lse_ptr + row, lse)
        tl.store(zy_ptr + row, zy)
        tl.store(sz_ptr + row, sz)
        if WRITE_GRAD:
            r = tl.load(r_ptr + row).to(acc_ty)
            u_sum = tl.load(params_ptr).to(acc_ty)
            z_loss = tl.load(params_ptr + 1).to(acc_ty)
            a = b + c * u_sum + 2.0 * z_loss * e * tl.where(e != 0, lse, 0.0)
            g_row = g_ptr + row * g_stride
            for start in range(0, K, BLOCK):
                cols = start + offs
                mask = cols < K
                z = tl.load(z_row + cols, mask=mask, other=float("-inf")).to(acc_ty)
                g = a * tl.exp(z - lse)
                if DENSE_SMOOTH:
                    if HAS_U:
                        u = tl.load(u_ptr + cols, mask=mask, other=0.0).to(acc_ty)
                        g = g - c * u
                    else:
                        g = g - c
                g = tl.where(cols == y, g - b, g) * r
                tl.store(g_row + cols, g.to(g_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(lse_ptr + row, tl.zeros([], acc_ty))
        tl.store(zy_ptr + row, tl.zeros([], acc_ty))
        tl.store(sz_ptr + row, tl.zeros([], acc_ty))
        if WRITE_GRAD:
            g_row = g_ptr + row * g_stride
            for start in range(0, K, BLOCK):
                cols = start + offs
                tl.store(g_row + cols, tl.zeros([BLOCK], acc_ty).to(g_ptr.dtype.element_ty),
                         mask=cols < K)


def interpreting() -> bool:
    """True when these kernels (and triton.language's own helpers) run under the interpreter."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_ce_rows_kernel, InterpretedFunction) and isinstance(tl.max, InterpretedFunction)


def block_size(num_classes: int, element_size: int) -> int:
    """Columns per loop step: the row in one step when it is short, else 8192 (16384 for 2-byte)."""
    cap = 64 if interpreting() else (16384 if element_size <= 2 else 8192)
    return max(16, min(triton.next_power_of_2(max(num_classes, 1)), cap))


def row_stats(z: torch.Tensor, target: torch.Tensor, coef: RowCoefficients, r: torch.Tensor | None,
              z_loss: float, grad: torch.Tensor | None, *, dense_smooth: bool,
              block: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the kernel on ``(N, K)`` logits; returns ``(lse, zy, sz)`` in the accumulation dtype.

    ``grad`` (``(N, K)``, may be ``z`` itself) receives the row-scaled gradient when given; ``r`` is
    the per-row scale ``(N,)`` (required with ``grad``). ``dense_smooth=False`` leaves out ``-c u``.
    """
    n, k = z.shape
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    if z.stride(1) != 1:
        raise ValueError("row_stats needs logits with unit stride along the classes")
    lse = torch.empty(n, dtype=acc, device=z.device)
    zy = torch.empty_like(lse)
    sz = torch.empty_like(lse)
    if n == 0:
        return lse, zy, sz
    b = coef.b.to(acc).contiguous()
    c = coef.c.to(acc).contiguous()
    e = coef.e.to(acc).contiguous()
    u = None if coef.u is None else coef.u.to(acc).contiguous()
    if grad is not None:
        if grad.shape != z.shape or grad.stride(1) != 1:
            raise ValueError("grad must have the logits' shape and unit stride along the classes")
        if r is None:
            raise ValueError("row_stats needs the per-row scale r when writing the gradient")
        r = r.to(acc).expand(n).contiguous()
    # U and the z-loss weight go in as a tensor: a Python float argument would be rounded to fp32.
    params = torch.tensor([float(coef.u_sum), float(z_loss)], dtype=acc).to(z.device)
    block = block or block_size(k, z.element_size())
    num_warps = 4 if block <= 2048 else (8 if block <= 8192 else 16)
    _ce_rows_kernel[(n,)](
        z, z.stride(0), z if grad is None else grad, 0 if grad is None else grad.stride(0),
        target.contiguous(), b, c, e, b if r is None else r, b if u is None else u,
        lse, zy, sz, params, k,
        HAS_U=u is not None, WRITE_GRAD=grad is not None, DENSE_SMOOTH=dense_smooth,
        ACC_FP64=acc == torch.float64, BLOCK=block, num_warps=num_warps,
    )
    return lse, zy, sz
