r"""Fused linear + label-smoothed cross-entropy that never builds the ``N x V`` logits.

For hidden states :math:`h_i \in \mathbb{R}^H`, a classifier :math:`W \in \mathbb{R}^{V\times H}` and
an optional bias :math:`\beta`, the logits are :math:`z_i = W h_i + \beta` and the loss is
:func:`labelsmooth.cross_entropy` of them. With the per-row coefficients of :mod:`labelsmooth._stats`
and the reduction's row scale :math:`r_i`, the gradient of the logits is

.. math:: g_i = r_i\,(a_i\,\mathrm{softmax}(z_i) - b_i\,e_{y_i}) \;-\; r_i c_i\, u

The first part is computed chunk by chunk over the tokens and folded at once into
:math:`\partial h_i = g_i W`, :math:`\partial W \mathrel{+}= g_i^\top h_i` and
:math:`\partial\beta \mathrel{+}= \sum_i g_i`. The smoothing part :math:`-r_i c_i u` is dense but
rank one, so it is applied exactly once, outside the chunks:

.. math:: \partial h_i \mathrel{-}= r_i c_i\, (u^\top W), \qquad
          \partial W \mathrel{-}= u \otimes \textstyle\sum_i r_i c_i h_i, \qquad
          \partial\beta \mathrel{-}= u \textstyle\sum_i r_i c_i

(without class weights :math:`u = 1` and :math:`u^\top W = V \cdot \mathrm{mean}(W)`, so
:math:`r_i c_i\,u^\top W = r_i\,\varepsilon\,\mathrm{mean}_v W_v`). Rows whose target is
``ignore_index`` are dropped before chunking and cost no matmul.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from . import _dispatch
from ._options import check_weight
from ._stats import (
    RowCoefficients,
    grad_row_scale,
    loss_from_stats,
    reduce_rows,
    reduction_scale,
    row_coefficients,
)
from .functional import _check_index_target, _options, output_dtype

__all__ = ["DEFAULT_MEMORY_BUDGET", "chunk_rows", "linear_cross_entropy"]

#: Default bytes of per-chunk working memory (the chunk's logits and their gradient), per device type.
DEFAULT_MEMORY_BUDGET = {"cpu": 64 * 2**20, "cuda": 512 * 2**20}
_FALLBACK_BUDGET = 64 * 2**20

#: A step turns one chunk of logits into (lse, zy, sz) and, when asked, the chunk's gradient without
#: the dense smoothing part. Signature: (z, y, coef, r, z_loss, write_grad, lse, zy, sz) -> grad|None.
Step = Callable[..., "torch.Tensor | None"]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _torch_step(z: torch.Tensor, y: torch.Tensor, coef: RowCoefficients, r: torch.Tensor | None,
                z_loss: float, write_grad: bool, lse_out: torch.Tensor, zy_out: torch.Tensor,
                sz_out: torch.Tensor) -> torch.Tensor | None:
    """Plain-torch chunk step: a few in-place passes over the chunk, one ``exp`` per logit."""
    acc = lse_out.dtype
    zf = z if z.dtype == acc else z.to(acc)
    zy_out.copy_(zf.gather(1, y.unsqueeze(1)).squeeze(1))
    sz_out.copy_(zf.sum(1) if coef.u is None else torch.mv(zf, coef.u))
    m = zf.amax(1)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    zf.sub_(m.unsqueeze(1)).exp_()
    s = zf.sum(1)
    lse = m + s.log()
    lse_out.copy_(lse)
    if not write_grad:
        return None
    a = grad_row_scale(lse, coef, z_loss)
    zf.mul_((a * r / s).unsqueeze(1))
    zf.scatter_add_(1, y.unsqueeze(1), (-(coef.b * r)).unsqueeze(1))
    return zf


def _triton_step(z: torch.Tensor, y: torch.Tensor, coef: RowCoefficients, r: torch.Tensor | None,
                 z_loss: float, write_grad: bool, lse_out: torch.Tensor, zy_out: torch.Tensor,
                 sz_out: torch.Tensor) -> torch.Tensor | None:
    """Triton chunk step: the cross-entropy kernel, gradient written in place into the chunk."""
    from .backends.triton import _kernels

    lse, zy, sz = _kernels.row_stats(z, y, coef, r, z_loss, z if write_grad else None,
                                     dense_smooth=False)
    lse_out.copy_(lse)
    zy_out.copy_(zy)
    sz_out.copy_(sz)
    return z if write_grad else None


def _slice(coef: RowCoefficients, index: slice | torch.Tensor) -> RowCoefficients:
    return RowCoefficients(coef.b[index], coef.c[index], coef.e[index], coef.u, coef.u_sum)


def chunk_rows(num_rows: int, num_classes: int, dtype: torch.dtype, device: torch.device,
               chunk_size: int | None = None, memory_budget: int | None = None,
               fp32_copy: bool = True) -> int:
    """Tokens per chunk: ``chunk_size`` if given, else as many as fit ``memory_budget`` bytes.

    A chunk row costs ``V`` logits of ``dtype`` plus, for half precision with ``fp32_copy``, their
    fp32 working copy. The default budget is :data:`DEFAULT_MEMORY_BUDGET` for the device type.
    """
    if chunk_size is not None:
        return max(1, min(chunk_size, num_rows))
    budget = memory_budget if memory_budget is not None else DEFAULT_MEMORY_BUDGET.get(
        device.type, _FALLBACK_BUDGET)
    size = torch.empty((), dtype=dtype).element_size()
    per_row = num_classes * (size + (4 if fp32_copy and size < 4 else 0))
    return max(1, min(budget // max(per_row, 1), max(num_rows, 1)))


def _check_positive_int(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int or None, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name}={value} is out of range; allowed: an int >= 1 or None")
    return value


def _chunk_loop(h: torch.Tensor, classifier: torch.Tensor, bias: torch.Tensor | None,
                y: torch.Tensor, coef: RowCoefficients, r: torch.Tensor | None, z_loss: float,
                chunk: int, step: Step, need: tuple[bool, bool, bool]):
    """Statistics of every row of ``h`` and, when ``r`` is given, the gradients asked for by
    ``need = (hidden, classifier, bias)``, exact, smoothing part included."""
    n = h.shape[0]
    num_classes = classifier.shape[0]
    acc = _acc_dtype(h.dtype)
    write = r is not None and any(need)
    # Half precision on CPU accumulates the classifier's gradient in fp32 (with an fp32 matmul); on
    # GPU it accumulates in place in the parameter's dtype (the matmul accumulates in fp32 inside).
    low_cpu = h.dtype != acc and h.device.type == "cpu"
    w_acc = acc if low_cpu else classifier.dtype
    g_h = torch.empty_like(h) if write and need[0] else None
    g_w = torch.zeros(classifier.shape, dtype=w_acc, device=h.device) if write and need[1] else None
    g_b = torch.zeros(num_classes, dtype=acc, device=h.device) if write and need[2] else None
    lse = torch.empty(n, dtype=acc, device=h.device)
    zy = torch.empty_like(lse)
    sz = torch.empty_like(lse)
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        h_c = h[rows]
        z = F.linear(h_c, classifier, bias)
        g = step(z, y[rows], _slice(coef, rows), None if r is None else r[rows], z_loss, write,
                 lse[rows], zy[rows], sz[rows])
        if not write or g is None:
            continue
        g_low = g if g.dtype == h.dtype else g.to(h.dtype)
        if g_h is not None:
            torch.mm(g_low, classifier, out=g_h[rows])
        if g_w is not None:
            if g_w.dtype == h.dtype:
                g_w.addmm_(g_low.t(), h_c)
            else:  # half precision on CPU: an fp32 matmul into the fp32 accumulator
                g_w.addmm_(g.t() if g.dtype == g_w.dtype else g.to(g_w.dtype).t(), h_c.to(g_w.dtype))
        if g_b is not None:
            g_b += g.sum(0, dtype=acc)
        del z, g, g_low
    if write and coef.c.numel() and bool((coef.c != 0).any()):
        cr = coef.c * r  # (n,) acc: the rank-one smoothing part, r_i c_i
        u = coef.u
        if g_h is not None:
            u_w = (classifier.sum(0, dtype=acc) if u is None
                   else torch.mv(classifier.t().to(acc) if classifier.dtype != acc
                                 else classifier.t(), u))
            g_h.addr_(cr.to(g_h.dtype), u_w.to(g_h.dtype), alpha=-1)
        if g_w is not None:
            s_h = torch.mv(h.t(), cr.to(h.dtype)).to(acc) if h.dtype != acc else torch.mv(h.t(), cr)
            if u is None:
                g_w.sub_(s_h.to(g_w.dtype).unsqueeze(0))
            else:
                g_w.addr_(u.to(g_w.dtype), s_h.to(g_w.dtype), alpha=-1)
        if g_b is not None:
            total = cr.sum()
            g_b.sub_(total if u is None else u * total)
    return (lse, zy, sz), (g_h, g_w, g_b)


class _LinearCrossEntropy(torch.autograd.Function):
    """Chunked forward; gradients are computed in the forward for ``mean``/``sum`` (backward scales
    them by ``grad_output``) and recomputed in the backward for ``reduction="none"``."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, classifier: torch.Tensor,  # type: ignore[override]
                bias: torch.Tensor | None, target: torch.Tensor, weight: torch.Tensor | None,
                opts, chunk_size: int | None, memory_budget: int | None, step: Step,
                fp32_copy: bool, grad_enabled: bool) -> torch.Tensor:
        n = hidden.shape[0]
        num_classes = classifier.shape[0]
        acc = _acc_dtype(hidden.dtype)
        coef = row_coefficients(target, weight, opts, num_classes, acc)
        live = (coef.b != 0) | (coef.c != 0) | (coef.e != 0)
        index = None if bool(live.all()) else live.nonzero().squeeze(1)
        h = hidden if index is None else hidden.index_select(0, index)
        y = target if index is None else target.index_select(0, index)
        coef_k = coef if index is None else _slice(coef, index)
        chunk = chunk_rows(h.shape[0], num_classes, hidden.dtype, hidden.device, chunk_size,
                           memory_budget, fp32_copy)
        # needs_input_grad follows requires_grad even under torch.no_grad(): ask the caller's mode.
        need = (grad_enabled and ctx.needs_input_grad[0], grad_enabled and ctx.needs_input_grad[1],
                grad_enabled and bias is not None and ctx.needs_input_grad[2])
        recompute = opts.reduction == "none"
        r = None
        if any(need) and not recompute:
            scale = reduction_scale(coef, opts.reduction)
            r = torch.ones(h.shape[0], dtype=acc, device=h.device) * scale
        (lse, zy, sz), grads = _chunk_loop(h, classifier, bias, y, coef_k, r, opts.z_loss, chunk,
                                           step, need)
        per_row_k = loss_from_stats(lse, zy, sz, coef_k, opts.z_loss)
        if index is None:
            per_row = per_row_k
        else:
            per_row = torch.zeros(n, dtype=acc, device=hidden.device).index_copy_(0, index, per_row_k)
        ctx.index = index
        ctx.shapes = (hidden.shape, classifier.dtype, None if bias is None else bias.dtype)
        ctx.reduction = opts.reduction
        if recompute:
            ctx.args = (coef_k, opts.z_loss, chunk, step, need)
            ctx.save_for_backward(h, classifier, bias, y)
        else:
            ctx.grads = grads
        return reduce_rows(per_row, opts.reduction, reduction_scale(coef, opts.reduction))

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        if ctx.reduction == "none":
            h, classifier, bias, y = ctx.saved_tensors
            coef_k, z_loss, chunk, step, need = ctx.args
            r = grad_output if ctx.index is None else grad_output.index_select(0, ctx.index)
            r = r.to(_acc_dtype(h.dtype))
            _, (g_h, g_w, g_b) = _chunk_loop(h, classifier, bias, y, coef_k, r, z_loss, chunk,
                                             step, need)
        else:
            if getattr(ctx, "grads", None) is None:
                raise RuntimeError("linear_cross_entropy: backward was already run for this graph "
                                   "(its stored gradients are consumed); recompute the loss")
            g_h, g_w, g_b = ctx.grads
            ctx.grads = None  # hand the buffers to autograd without an extra reference (no copy)
            for g in (g_h, g_w, g_b):
                if g is not None:
                    g.mul_(grad_output.to(g.dtype))
        hidden_shape, w_dtype, b_dtype = ctx.shapes
        if g_h is not None and ctx.index is not None:
            full = torch.zeros(hidden_shape, dtype=g_h.dtype, device=g_h.device)
            g_h = full.index_copy_(0, ctx.index, g_h)
        if g_w is not None:
            g_w = g_w.to(w_dtype)
        if g_b is not None:
            g_b = g_b.to(b_dtype)
        return g_h, g_w, g_b, None, None, None, None, None, None, None, None


def _check_tensors(hidden: torch.Tensor, classifier: torch.Tensor, bias: object, target: object
                   ) -> tuple[int, int]:
    for name, value in (("hidden", hidden), ("classifier", classifier)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{name} has dtype {value.dtype}; allowed: float16, bfloat16, float32, "
                            "float64")
    if hidden.dim() < 1:
        raise ValueError("hidden must have at least 1 dimension (..., H), got a 0-d tensor")
    if classifier.dim() != 2 or classifier.shape[1] != hidden.shape[-1]:
        raise ValueError(f"classifier has shape {tuple(classifier.shape)}; allowed: (V, "
                         f"{hidden.shape[-1]}), one row of hidden size H={hidden.shape[-1]} per class")
    if classifier.shape[0] < 1:
        raise ValueError("classifier has 0 rows; allowed: at least one class")
    if classifier.dtype != hidden.dtype or classifier.device != hidden.device:
        raise ValueError(f"classifier is {classifier.dtype} on {classifier.device}; allowed: the "
                         f"dtype and device of hidden ({hidden.dtype} on {hidden.device})")
    num_classes = classifier.shape[0]
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if bias.shape != (num_classes,):
            raise ValueError(f"bias has shape {tuple(bias.shape)}; allowed: ({num_classes},)")
        if bias.dtype != hidden.dtype or bias.device != hidden.device:
            raise ValueError(f"bias is {bias.dtype} on {bias.device}; allowed: the dtype and "
                             f"device of hidden ({hidden.dtype} on {hidden.device})")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.is_floating_point():
        raise ValueError("linear_cross_entropy takes class-index targets only; probability targets "
                         "are not supported (build the logits and use labelsmooth.cross_entropy)")
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"target has dtype {target.dtype}; allowed: integer class ids")
    if target.shape != hidden.shape[:-1]:
        raise ValueError(f"target has shape {tuple(target.shape)}; allowed: "
                         f"{tuple(hidden.shape[:-1])} (hidden's shape without H)")
    if target.device != hidden.device:
        raise ValueError(f"target is on {target.device} but hidden is on {hidden.device}")
    return num_classes, hidden.shape[-1]


def _step_for(backend: str, device: torch.device) -> tuple[str, Step | None]:
    name = _dispatch.requested(backend)
    if name == "auto":
        triton_ok = importlib.util.find_spec("triton") is not None
        name = "triton" if device.type == "cuda" and triton_ok else "cpu"
    if name == "reference":
        return name, None
    if name == "triton":
        if importlib.util.find_spec("triton") is None:
            raise ValueError("backend='triton' needs triton installed (pip install "
                             "'labelsmooth[triton]')")
        if device.type != "cuda":
            from .backends.triton import _kernels

            if not _kernels.interpreting():
                raise ValueError(f"backend='triton' needs CUDA tensors (got {device.type}) or "
                                 "Triton's interpreter (TRITON_INTERPRET=1 before importing triton)")
        return name, _triton_step
    return "cpu", _torch_step


def linear_cross_entropy(
    hidden: torch.Tensor,
    classifier: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    convention: str = "uniform",
    weight_mode: str = "class",
    z_loss: float = 0.0,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    backend: str = "auto",
    validate: bool | None = None,
    group: Any = None,
) -> torch.Tensor:
    r"""``cross_entropy(F.linear(hidden, classifier, bias), target, ...)`` without the logits.

    Same loss, rules and keywords as :func:`labelsmooth.cross_entropy` (conventions, ``weight`` /
    ``weight_mode``, ``ignore_index``, reductions, ``z_loss``; the class dimension is the last one),
    differentiable w.r.t. ``hidden``, ``classifier`` and ``bias``. Never allocates the ``N x V``
    logits: tokens go through in chunks of ``chunk_size`` rows, by default as many as fit
    ``memory_budget`` bytes of chunk logits (:data:`DEFAULT_MEMORY_BUDGET`). The math is in the module
    docstring: the dense smoothing part of the gradient is applied as an exact rank-one update
    outside the chunks; ignored tokens are dropped before any matmul.

    Args:
        hidden: ``(..., H)`` hidden states, float16/bfloat16/float32/float64.
        classifier: ``(V, H)`` output projection (same dtype and device).
        target: ``(...)`` class ids (probability targets are not supported: ``ValueError``).
        bias: optional ``(V,)``.
        weight: optional per-class weights ``(V,)`` (keyword-only here).
        chunk_size: tokens per chunk (overrides ``memory_budget``).
        memory_budget: bytes of chunk logits (plus their fp32 copy for half precision on CPU).
        backend: ``"auto"`` (Triton chunk step on CUDA, torch elsewhere), ``"cpu"`` (chunked, torch
            step, any device), ``"triton"`` (chunked, Triton step) or ``"reference"`` (materialises the
            logits: the executable specification).
        validate: check class ids against ``[0, V)``; default on CPU only.
        group: a ``torch.distributed`` process group over which ``classifier`` (and ``bias``,
            ``weight``) are sharded by rows (classes), in rank order: the call is then
            :func:`labelsmooth.distributed.vocab_parallel_linear_cross_entropy` (global class ids,
            smoothing over the global vocabulary, the hidden gradient all-reduced across ranks).

    Logits are computed in the input dtype (the matmul accumulates in fp32) and reduced in fp32.
    ``reduction="none"`` recomputes the chunk loop in backward (its per-row ``grad_output`` cannot
    scale the summed classifier gradient afterwards); ``mean``/``sum`` compute the gradients in the
    forward and backward only scales them, so backward may run once per forward.

    Returns:
        The loss; float32 for half-precision inputs.
    """
    if group is not None:
        from .distributed import vocab_parallel_linear_cross_entropy

        return vocab_parallel_linear_cross_entropy(
            hidden, classifier, target, bias, weight=weight, group=group, ignore_index=ignore_index,
            reduction=reduction, label_smoothing=label_smoothing, convention=convention,
            weight_mode=weight_mode, z_loss=z_loss, chunk_size=chunk_size, validate=validate)
    num_classes, hidden_size = _check_tensors(hidden, classifier, bias, target)
    opts = _options(num_classes, ignore_index=ignore_index, reduction=reduction,
                    label_smoothing=label_smoothing, convention=convention,
                    weight_mode=weight_mode, z_loss=z_loss)
    weight = check_weight(weight, num_classes, hidden)
    chunk_size = _check_positive_int("chunk_size", chunk_size)
    memory_budget = _check_positive_int("memory_budget", memory_budget)
    flat_target = target.reshape(-1).long()
    if validate or (validate is None and target.device.type == "cpu"):
        _check_index_target(flat_target, num_classes, ignore_index)
    name, step = _step_for(backend, hidden.device)
    if step is None:
        from .functional import cross_entropy

        logits = F.linear(hidden, classifier, bias)
        return cross_entropy(logits, target, weight, ignore_index=ignore_index, reduction=reduction,
                             label_smoothing=label_smoothing, convention=convention,
                             weight_mode=weight_mode, dim=-1, z_loss=z_loss, backend="reference",
                             validate=False)
    flat_hidden = hidden.reshape(-1, hidden_size)
    loss = _LinearCrossEntropy.apply(flat_hidden, classifier, bias, flat_target, weight, opts,
                                     chunk_size, memory_budget, step, name == "cpu",
                                     torch.is_grad_enabled())
    if opts.reduction == "none":
        loss = loss.reshape(target.shape)
    return loss.to(output_dtype(hidden.dtype))
