"""Triton backend for :func:`labelsmooth.cross_entropy` (GPU; CPU only under the interpreter).

Importing this package does not import ``triton``; the kernels in :mod:`._kernels` are imported on the
first call. One launch per call computes, per row, ``lse`` (online max / sum-exp), the target logit and
``sum_c u_c z_c``, and writes the gradient of the loss w.r.t. the logits (into the logits' own storage
when ``inplace_backward=True``). The loss itself comes from those statistics through
:func:`labelsmooth._stats.loss_from_stats`, the math every fused path shares; backward only multiplies
the stored gradient by ``grad_output``.

Not fused (``unsupported`` names the reason and the dispatcher falls back to ``reference``):
probability targets, empty inputs, devices other than CUDA, and CPU tensors unless the process runs
Triton's interpreter (``TRITON_INTERPRET=1`` set before ``triton`` is first imported).
"""

from __future__ import annotations

import importlib.util

import torch

from ..._options import LossOptions
from ..._stats import loss_from_stats, reduce_rows, reduction_scale, row_coefficients

__all__ = ["cross_entropy", "unsupported"]


def unsupported(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                opts: LossOptions) -> str | None:
    """Why this call cannot run on the Triton kernel, or None."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'labelsmooth[triton]')"
    if target.is_floating_point():
        return "probability targets are not fused in the Triton kernel"
    if logits.numel() == 0:
        return "empty input"
    if logits.device.type == "cuda":
        return None
    if logits.device.type == "cpu":
        from . import _kernels

        if _kernels.interpreting():
            return None
        return ("CPU tensors run the Triton kernel only under its interpreter "
                "(TRITON_INTERPRET=1 set before triton is first imported)")
    return f"device type {logits.device.type!r} is not supported by the Triton kernel"


class _TritonCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor,  # type: ignore[override]
                weight: torch.Tensor | None, opts: LossOptions, grad_enabled: bool) -> torch.Tensor:
        from . import _kernels

        acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
        n, k = logits.shape
        coef = row_coefficients(target, weight, opts, k, acc)
        want_grad = grad_enabled and ctx.needs_input_grad[0]  # (needs_input_grad ignores no_grad)
        grad = None
        r = None
        if want_grad:
            r = torch.ones(n, dtype=acc, device=logits.device) * reduction_scale(coef, opts.reduction)
            inplace = opts.inplace_backward and logits.stride(1) == 1
            grad = logits if inplace else torch.empty_like(logits, memory_format=torch.contiguous_format)
        z = logits if logits.stride(1) == 1 else logits.contiguous()
        lse, zy, sz = _kernels.row_stats(z, target, coef, r, opts.z_loss, grad, dense_smooth=True)
        per_row = loss_from_stats(lse, zy, sz, coef, opts.z_loss)
        ctx.reduction = opts.reduction
        ctx.inplace = bool(opts.inplace_backward)
        if want_grad:
            ctx.save_for_backward(grad)
        return reduce_rows(per_row, opts.reduction, reduction_scale(coef, opts.reduction))

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        scale = grad_output.unsqueeze(1) if ctx.reduction == "none" else grad_output
        scale = scale.to(grad.dtype)
        grad = grad.mul_(scale) if ctx.inplace else grad * scale
        return grad, None, None, None, None


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                  opts: LossOptions) -> torch.Tensor:
    """Loss of ``(N, K)`` logits and ``(N,)`` class ids (see :mod:`labelsmooth._dispatch`)."""
    return _TritonCrossEntropy.apply(logits, target, weight, opts, torch.is_grad_enabled())
