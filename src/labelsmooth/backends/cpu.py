"""Fused one-pass CPU backend: loss and gradient from one ``exp`` per logit.

For ``(N, K)`` logits and class-index targets, one pass over each row computes the statistics of
:mod:`labelsmooth._stats` (``m``, ``lse = m + log sum exp(z - m)``, ``z_y``, ``sum_c u_c z_c``) and,
when the logits require grad, writes the gradient

    dL/dz_ik = r * (a_i softmax(z_i)_k - b_i [k = y_i] - c_i u_k),   a_i = b_i + c_i U + 2 zl e_i lse_i

with the coefficients ``b, c, e, u, U`` of :func:`labelsmooth._stats.row_coefficients` and ``r`` the
reduction's scale (``1 / sum_i e_i`` for ``mean``). The loss is :func:`labelsmooth._stats.loss_from_stats`.
Backward only multiplies the stored gradient by the incoming gradient (nothing when it is 1), so
forward + backward costs about one ``torch.exp`` over the logits. Without grad nothing ``N x K`` is
written.

Memory: the gradient (``N x K`` in the input's dtype) plus one fp32 row per thread for half-precision
inputs. With ``inplace_backward=True`` the gradient is written into the logits' own storage: the
logits are consumed (they hold the gradient after the forward call; do not read them again).

The first backward hands the stored gradient to autograd without a copy; a second backward through
a retained graph recomputes it (with ``inplace_backward=True`` it raises: the logits are gone). The
backward is not differentiable again (no double backward).

Falls back to ``reference`` (see :func:`unsupported`) for: probability targets, tensors not on the
CPU, a ``weight`` that requires grad, dtypes other than fp16/bf16/fp32/fp64. Without a C++ compiler
the same math runs in a pure-torch chunked implementation (one warning).
"""

from __future__ import annotations

import torch

from .._options import LossOptions
from .._stats import (
    RowCoefficients,
    grad_row_scale,
    loss_from_stats,
    reduce_rows,
    reduction_scale,
    row_coefficients,
)
from . import _cpu_build

#: Elements per chunk of the pure-torch path (its only temporaries are a few chunks).
CHUNK_ELEMENTS = 1 << 20


def unsupported(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                opts: LossOptions) -> str | None:
    """Why this backend cannot compute the call (then ``reference`` does), or ``None``."""
    if logits.device.type != "cpu":
        return f"logits are on {logits.device}; the cpu backend runs on CPU tensors"
    if target.is_floating_point():
        return "probability targets are not fused"
    if logits.dtype not in _cpu_build.DTYPE_SYMBOLS:
        return f"dtype {logits.dtype} is not fused"
    if weight is not None and weight.requires_grad:
        return "a weight that requires grad (the fused path gives no weight gradient)"
    return None


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _row_view(logits: torch.Tensor) -> torch.Tensor:
    """Rows with unit class stride, not overlapping (so the gradient can be written into it)."""
    n, k = logits.shape
    if logits.stride(1) == 1 and (n <= 1 or logits.stride(0) >= k):
        return logits
    return logits.contiguous()


def fused_statistics(logits: torch.Tensor, target: torch.Tensor, coef: RowCoefficients,
                     opts: LossOptions, scale: float, grad: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row ``(lse, z_y, sum u z)`` of ``(N, K)`` logits; fills ``grad`` (if given) in the same pass.

    ``grad`` may be ``logits`` itself (in-place). Ignored rows get zeros everywhere.
    """
    lib = _cpu_build.library()
    if lib is None:
        return _torch_statistics(logits, target, coef, opts, scale, grad)
    n, k = logits.shape
    acc = _acc_dtype(logits.dtype)
    lse = torch.empty(n, dtype=acc)
    zy = torch.empty(n, dtype=acc)
    sz = torch.empty(n, dtype=acc)
    target = target.contiguous()
    b, c, e = (t.to(acc).contiguous() for t in (coef.b, coef.c, coef.e))
    u = None if coef.u is None else coef.u.to(acc).contiguous()
    fn = getattr(lib, _cpu_build.DTYPE_SYMBOLS[logits.dtype])
    status = fn(logits.data_ptr(), n, k, logits.stride(0), target.data_ptr(), b.data_ptr(),
                c.data_ptr(), e.data_ptr(), None if u is None else u.data_ptr(), coef.u_sum,
                opts.z_loss, scale, lse.data_ptr(), zy.data_ptr(), sz.data_ptr(),
                None if grad is None else grad.data_ptr(), 0 if grad is None else grad.stride(0))
    if status != 0:
        _raise_bad_target(target, coef, k)
    return lse, zy, sz


def _raise_bad_target(target: torch.Tensor, coef: RowCoefficients, k: int) -> None:
    kept = (coef.b != 0) | (coef.c != 0) | (coef.e != 0)
    bad = kept & ((target < 0) | (target >= k))
    value = int(target[bad][0]) if bool(bad.any()) else None
    raise IndexError(f"target contains class id {value}; allowed: 0 .. {k - 1} or ignore_index")


def _torch_statistics(logits: torch.Tensor, target: torch.Tensor, coef: RowCoefficients,
                      opts: LossOptions, scale: float, grad: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same computation in plain torch, a chunk of rows at a time (no-compiler fallback)."""
    n, k = logits.shape
    acc = _acc_dtype(logits.dtype)
    lse, zy, sz = (torch.zeros(n, dtype=acc) for _ in range(3))
    kept_all = (coef.b != 0) | (coef.c != 0) | (coef.e != 0)
    if bool((kept_all & ((target < 0) | (target >= k))).any()):
        _raise_bad_target(target, coef, k)
    u = None if coef.u is None else coef.u.to(acc)
    rows = max(1, CHUNK_ELEMENTS // max(k, 1))
    for start in range(0, n, rows):
        sl = slice(start, min(n, start + rows))
        kept = kept_all[sl]
        z = torch.where(kept.unsqueeze(1), logits[sl].to(acc), torch.zeros((), dtype=acc))
        m = z.amax(dim=1, keepdim=True) if k else torch.zeros(z.shape[0], 1, dtype=acc)
        m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
        p = (z - m).exp_()
        s = p.sum(dim=1)
        lse[sl] = torch.where(kept, m.squeeze(1) + s.log(), torch.zeros_like(s))
        safe = torch.where(kept, target[sl], torch.zeros_like(target[sl])).unsqueeze(1)
        zy[sl] = torch.where(kept, z.gather(1, safe).squeeze(1) if k else s, torch.zeros_like(s))
        if u is None:
            sz[sl] = z.sum(dim=1)
        else:
            sz[sl] = torch.where(u == 0, torch.zeros_like(z), z * u).sum(dim=1)
        if grad is None:
            continue
        part = RowCoefficients(coef.b[sl], coef.c[sl], coef.e[sl], coef.u, coef.u_sum)
        a = grad_row_scale(lse[sl], part, opts.z_loss)
        inv = torch.where(s > 0, scale * a / torch.where(s > 0, s, 1.0), torch.zeros_like(s))
        g = p.mul_(inv.unsqueeze(1))
        g -= (scale * part.c).unsqueeze(1) * (1.0 if u is None else u)
        g.scatter_add_(1, safe, (-scale * part.b).unsqueeze(1))
        g.masked_fill_(~kept.unsqueeze(1), 0.0)
        grad[sl] = g
    return lse, zy, sz


class _FusedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, coef: RowCoefficients,
                opts: LossOptions, scale: float) -> torch.Tensor:  # type: ignore[override]
        rows = _row_view(logits)
        grad = rows if opts.inplace_backward else torch.empty(rows.shape, dtype=rows.dtype)
        lse, zy, sz = fused_statistics(rows, target, coef, opts, scale, grad)
        ctx.grad = grad.detach()
        ctx.coef, ctx.opts, ctx.scale = coef, opts, scale
        # Kept only to recompute the gradient if backward runs again through a retained graph
        # (the logits are alive anyway; they are not copied).
        ctx.save_for_backward(None if opts.inplace_backward else logits, target)
        return reduce_rows(loss_from_stats(lse, zy, sz, coef, opts.z_loss), opts.reduction, scale)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        # Handing our only reference to autograd lets it become ``.grad`` without a copy.
        grad, ctx.grad = ctx.grad, None
        if grad is None:  # a second backward through a retained graph: recompute
            logits, target = ctx.saved_tensors
            if logits is None:
                raise RuntimeError(
                    "labelsmooth cpu backend: with inplace_backward=True the logits hold the "
                    "gradient and backward can run only once; use inplace_backward=False to "
                    "backpropagate through the same graph again")
            rows = _row_view(logits)
            grad = torch.empty(rows.shape, dtype=rows.dtype)
            fused_statistics(rows, target, ctx.coef, ctx.opts, ctx.scale, grad)
        if ctx.opts.reduction == "none":
            grad.mul_(grad_output.unsqueeze(1))  # in fp32, rounded once to the grad dtype
        else:
            g = float(grad_output)
            if g != 1.0:
                grad.mul_(g)
        return grad, None, None, None, None


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                  opts: LossOptions) -> torch.Tensor:
    """Loss of ``(N, K)`` logits with ``(N,)`` class ids (see the module docstring for the math)."""
    acc = _acc_dtype(logits.dtype)
    coef = row_coefficients(target, weight, opts, logits.shape[1], acc)
    scale = float(reduction_scale(coef, opts.reduction))
    if torch.is_grad_enabled() and logits.requires_grad:
        return _FusedCrossEntropy.apply(logits, target, coef, opts, scale)
    lse, zy, sz = fused_statistics(_row_view(logits), target, coef, opts, scale, None)
    return reduce_rows(loss_from_stats(lse, zy, sz, coef, opts.z_loss), opts.reduction, scale)

