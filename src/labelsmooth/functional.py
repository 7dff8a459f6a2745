"""Public loss functions: argument checks, shape handling and the math, written down once.

Notation for one element: logits ``z in R^K``, class-index target ``y``, smoothing ``eps``.

* ``convention="uniform"`` (torch, timm, Keras):   ``q_c = (1 - eps) [c = y] + eps / K``
* ``convention="non_target"`` (fairseq, Megatron): ``q_c = (1 - eps) [c = y] + eps / (K - 1) [c != y]``,
  identical to ``uniform`` with ``eps * K / (K - 1)``; undefined (``ValueError``) for ``K = 1``.

Per element ``l = logsumexp(z) - sum_c q_c z_c`` and ``dl/dz = softmax(z) - q``.
"""

from __future__ import annotations

import torch

from . import _dispatch
from ._options import (
    CONVENTIONS,
    REDUCTIONS,
    WEIGHT_MODES,
    LossOptions,
    check_choice,
    check_float_input,
    check_int,
    check_nonnegative,
    check_same_device,
    check_unit_interval,
    check_weight,
    class_dim,
    effective_smoothing,
)

__all__ = ["binary_cross_entropy_with_logits", "cross_entropy", "smooth_targets"]


def _check_index_target(target: torch.Tensor, num_classes: int, ignore_index: int | None) -> None:
    """Raise ``IndexError`` for a class id outside ``[0, C)`` that is not ``ignore_index``."""
    if target.numel() == 0:
        return
    bad = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad &= target != ignore_index
    if bool(bad.any()):
        value = int(target[bad].flatten()[0])
        extra = "" if ignore_index is None else f" or ignore_index={ignore_index}"
        raise IndexError(
            f"target contains class id {value}; allowed: 0 .. {num_classes - 1}{extra}")


def _flatten(input: torch.Tensor, target: torch.Tensor, dim: int, ignore_index: int,
             validate: bool | None) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """Move the class dim last and flatten: ``(N, K)`` logits, ``(N,)`` ids or ``(N, K)`` probs.

    Returns the flat tensors and the shape of ``reduction="none"``'s result.
    """
    d = class_dim(dim, input.dim())
    num_classes = input.shape[d]
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    check_same_device("target", target, input)
    if num_classes == 0:
        raise ValueError(f"input has 0 classes along dim {d} (shape {tuple(input.shape)}); "
                         f"allowed: at least 1 class")
    batch_shape = input.shape[:d] + input.shape[d + 1:]
    if target.is_floating_point():
        if target.shape != input.shape:
            raise ValueError(
                f"probability target has shape {tuple(target.shape)}; allowed: the input's shape "
                f"{tuple(input.shape)} (or class ids of shape {tuple(batch_shape)})"
            )
        flat_target = target.movedim(d, -1).reshape(-1, num_classes)
    elif target.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        if target.shape != batch_shape:
            raise ValueError(
                f"target has shape {tuple(target.shape)}; allowed: {tuple(batch_shape)} (the input's "
                f"shape without class dim {d}) or probabilities of shape {tuple(input.shape)}"
            )
        flat_target = target.reshape(-1).long()
        if validate or (validate is None and target.device.type == "cpu"):
            _check_index_target(flat_target, num_classes, ignore_index)
    else:
        raise TypeError(f"target has dtype {target.dtype}; allowed: integer class ids or "
                        f"floating-point probabilities")
    flat_input = input.movedim(d, -1).reshape(-1, num_classes)
    return flat_input, flat_target, tuple(batch_shape)


def _options(num_classes: int, *, ignore_index: int, reduction: str, label_smoothing: float,
             convention: str, weight_mode: str, z_loss: float, inplace_backward: bool = False
             ) -> LossOptions:
    eps = check_unit_interval("label_smoothing", label_smoothing)
    check_choice("convention", convention, CONVENTIONS)
    check_choice("weight_mode", weight_mode, WEIGHT_MODES)
    check_choice("reduction", reduction, REDUCTIONS)
    ignore_index = check_int("ignore_index", ignore_index)
    return LossOptions(
        smoothing=effective_smoothing(eps, convention, num_classes),
        ignore_index=ignore_index,
        reduction=reduction,
        weight_mode=weight_mode,
        z_loss=check_nonnegative("z_loss", z_loss),
        inplace_backward=bool(inplace_backward),
    )


def prepare(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, *,
            ignore_index: int, reduction: str, label_smoothing: float, convention: str,
            weight_mode: str, dim: int, z_loss: float, inplace_backward: bool = False,
            validate: bool | None = None,
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, LossOptions, tuple[int, ...]]:
    """Check every argument of :func:`cross_entropy` and return what a backend takes.

    Shared by :func:`cross_entropy`, :func:`labelsmooth.linear_cross_entropy` and the distributed loss
    so that a rule is checked in one place.
    """
    check_float_input("input", input)
    d = class_dim(dim, input.dim())
    num_classes = input.shape[d]
    opts = _options(num_classes, ignore_index=ignore_index, reduction=reduction,
                    label_smoothing=label_smoothing, convention=convention,
                    weight_mode=weight_mode, z_loss=z_loss, inplace_backward=inplace_backward)
    weight = check_weight(weight, num_classes, input)
    flat_input, flat_target, out_shape = _flatten(input, target, d, ignore_index, validate)
    if flat_target.is_floating_point() and ignore_index != -100:
        raise ValueError(f"ignore_index={ignore_index} applies to class-index targets only; "
                         f"allowed with probability targets: the default -100 (as torch)")
    if flat_target.is_floating_point() and weight is not None and weight_mode == "sample":
        raise ValueError("weight_mode='sample' needs class-index targets (w[y] is undefined for "
                         "probability targets); allowed with probabilities: weight_mode='class'")
    return flat_input, flat_target, weight, opts, out_shape


def output_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs give a float32 loss (as under autocast); others keep their dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    convention: str = "uniform",
    weight_mode: str = "class",
    dim: int = 1,
    z_loss: float = 0.0,
    inplace_backward: bool = False,
    backend: str = "auto",
    validate: bool | None = None,
) -> torch.Tensor:
    r"""Label-smoothed cross-entropy, a drop-in for :func:`torch.nn.functional.cross_entropy`.

    For one element with logits :math:`z \in \mathbb{R}^K` (along ``dim``), target class :math:`y`
    and :math:`\varepsilon` = ``label_smoothing``:

    .. math::

        q_c = (1-\varepsilon)[c=y] + \varepsilon/K \quad(\text{uniform}), \qquad
        q_c = (1-\varepsilon)[c=y] + \tfrac{\varepsilon}{K-1}[c\neq y] \quad(\text{non\_target})

        \ell = \operatorname{lse}(z) - \textstyle\sum_c q_c z_c
               \;(+\; \lambda\, \operatorname{lse}(z)^2 \text{ with } \lambda = \texttt{z\_loss}),
        \qquad \partial\ell/\partial z = \operatorname{softmax}(z) - q

    The smoothing term is computed as ``lse(z) - mean(z)``, never as ``log(softmax)``.

    Weights (``weight``, one per class):

    * ``weight_mode="class"`` (torch parity): ``l = sum_c w_c q_c (lse - z_c)``; the mean divides by
      ``sum_i w[y_i]`` over kept elements. The minimiser is *not* ``q`` when weights differ.
    * ``weight_mode="sample"``: ``l = w[y] sum_c q_c (lse - z_c)``; same denominator; minimiser ``q``.

    The z-loss term of an element is scaled by that element's weight ``w[y]`` (1 without weights),
    so the mean stays a weighted average. Elements whose target is ``ignore_index`` contribute exactly 0
    to the loss and the gradient and are left out of the mean's denominator. A float ``target`` of the
    input's shape is a probability target: ``q = (1 - eps) t + eps/K`` (``non_target``:
    ``(1 - eps) t + eps (1 - t)/(K - 1)``), weighted as in class mode, and the mean divides by the
    number of elements. A mean over no kept element (empty or fully ignored input, or zero total weight)
    is ``0.0`` with a zero gradient; torch returns NaN there.

    Args:
        input: logits ``(N, C)``, ``(C,)``, ``(N, C, d1, ...)`` with ``dim=1``, or ``(..., C)`` with
            ``dim=-1``; float16/bfloat16/float32/float64 (accumulated in float32, float64 in float64).
        target: class ids (input's shape without ``dim``) or probabilities (input's shape).
        weight: optional per-class weights ``(C,)`` on the input's device.
        ignore_index: class id whose elements are ignored.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (target's shape, zeros at ignored elements).
        label_smoothing: ``eps`` in ``[0, 1]``.
        convention: ``"uniform"`` (eps/K) or ``"non_target"`` (eps/(K-1) on the other classes).
        weight_mode: ``"class"`` or ``"sample"``.
        dim: the class dimension.
        z_loss: ``lambda >= 0`` of the PaLM z-loss ``lambda * lse(z)^2``.
        inplace_backward: allow a fused backend to write the gradient into ``input``'s storage
            (the logits are then consumed: do not read them after the call).
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``.
        validate: check class ids against ``[0, C)``; default on CPU only (it costs a host sync on GPU).

    Returns:
        The loss, float32 for half-precision inputs, else the input's dtype.
    """
    flat_input, flat_target, weight, opts, out_shape = prepare(
        input, target, weight, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, convention=convention, weight_mode=weight_mode, dim=dim,
        z_loss=z_loss, inplace_backward=inplace_backward, validate=validate)
    impl = _dispatch.resolve(backend, flat_input, flat_target, weight, opts)
    loss = impl.cross_entropy(flat_input, flat_target, weight, opts)
    if opts.reduction == "none":
        loss = loss.reshape(out_shape)
    return loss.to(output_dtype(input.dtype))


def smooth_targets(
    target: torch.Tensor,
    num_classes: int,
    label_smoothing: float,
    *,
    convention: str = "uniform",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""The explicit smoothed target distribution, classes in a new last dimension.

    Class ids ``(...)`` give ``(..., K)`` with :math:`q_c = (1-\varepsilon)[c=y] + \varepsilon/K`
    (``uniform``) or :math:`(1-\varepsilon)[c=y] + \varepsilon/(K-1)[c\neq y]` (``non_target``).
    Probabilities ``(..., K)`` give :math:`(1-\varepsilon)t + \varepsilon/K` (``non_target``:
    :math:`(1-\varepsilon)t + \varepsilon(1-t)/(K-1)`); already-soft targets such as mixup are
    smoothed once here: do not smooth them again in the loss.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} is not allowed; allowed: an int >= 1")
    eps = check_unit_interval("label_smoothing", label_smoothing)
    check_choice("convention", convention, CONVENTIONS)
    eps = effective_smoothing(eps, convention, num_classes)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype={dtype!r} is not allowed; allowed: a floating-point torch.dtype")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.is_floating_point():
        if target.dim() == 0 or target.shape[-1] != num_classes:
            raise ValueError(f"probability target has shape {tuple(target.shape)}; allowed: "
                             f"(..., {num_classes})")
        return (1.0 - eps) * target.to(dtype) + eps / num_classes
    if target.dtype == torch.bool:
        raise TypeError("target has dtype torch.bool; allowed: integer class ids or probabilities")
    _check_index_target(target, num_classes, ignore_index=None)
    onehot = torch.nn.functional.one_hot(target.long(), num_classes).to(dtype)
    return (1.0 - eps) * onehot + eps / num_classes


def binary_cross_entropy_with_logits(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    reduction: str = "mean",
    pos_weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""Binary / multi-label cross-entropy on logits with label smoothing.

    Every output is its own two-class problem, so its uniform prior is 1/2 and the smoothed target is
    :math:`t' = t(1-\varepsilon) + \varepsilon/2` (Keras; YOLO's ``smooth_BCE``). Then, as torch,

    .. math:: \ell = -w\,[\,p_w\, t' \log\sigma(x) + (1-t') \log(1-\sigma(x))\,]

    with ``weight`` ``w`` and ``pos_weight`` ``p_w`` broadcast against the input (as torch).
    """
    check_float_input("input", input)
    eps = check_unit_interval("label_smoothing", label_smoothing)
    check_choice("reduction", reduction, REDUCTIONS)
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.shape != input.shape:
        raise ValueError(f"target has shape {tuple(target.shape)}; allowed: the input's shape "
                         f"{tuple(input.shape)}")
    check_same_device("target", target, input)
    for name, extra, shape in (("weight", weight, input.shape), ("pos_weight", pos_weight, input.shape)):
        if extra is None:
            continue
        if not isinstance(extra, torch.Tensor) or not extra.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor or None")
        check_same_device(name, extra, input)
        try:
            broadcast = torch.broadcast_shapes(extra.shape, shape) == shape
        except RuntimeError:
            broadcast = False
        if not broadcast:
            raise ValueError(f"{name} has shape {tuple(extra.shape)}; allowed: a shape that "
                             f"broadcasts to {tuple(shape)}")
    acc = torch.float64 if input.dtype == torch.float64 else torch.float32
    smoothed = target.to(acc) * (1.0 - eps) + eps / 2.0
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        input.to(acc), smoothed,
        weight=None if weight is None else weight.to(acc),
        pos_weight=None if pos_weight is None else pos_weight.to(acc),
        reduction=reduction)
    return loss.to(output_dtype(input.dtype))
