"""The loss and its gradient from per-row statistics: the math the fused paths share.

For class-index targets every backend that does not build ``q`` (the fused CPU path, the Triton
kernels, the chunked linear loss, the vocab-parallel loss) reduces a row of logits ``z`` (or a shard of
it) to four numbers:

* ``m = max_c z_c``, ``s = sum_c exp(z_c - m)``, so ``lse = m + log s``;
* ``zy = z_y`` (0 on a shard that does not hold the target);
* ``sz = sum_c u_c z_c`` with ``u = w`` (class weights) or ``u = 1``.

With the row coefficients of :func:`row_coefficients` (effective uniform ``eps``, K classes):

    l    = (b + c U) lse - b zy - c sz + zl e lse^2
    dl/dz_k = a p_k - b [k = y] - c u_k,          a = b + c U + 2 zl e lse

where ``p = softmax(z)``, ``U = sum_c u_c`` and, for a kept row with target y,

=================  ==============  ====================  ===========  ====================
weights            b               c                     e (element)  u
=================  ==============  ====================  ===========  ====================
none               1 - eps         eps / K               1            1
class (torch)      (1 - eps) w_y   eps / K               w_y          w
sample             (1 - eps) w_y   w_y eps / K           w_y          1
=================  ==============  ====================  ===========  ====================

An ignored row has ``b = c = e = 0``. ``e`` is also the row's share of the mean's denominator.
This equals ``sum_c a_c (lse - z_c)`` of :mod:`labelsmooth.backends.reference` term by term.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._options import LossOptions


class RowCoefficients(NamedTuple):
    """Per-row ``b``, ``c``, ``e`` (each ``(N,)``), the class vector ``u`` (``(K,)`` or None for
    all ones) and ``U = sum(u)`` (a float)."""

    b: torch.Tensor
    c: torch.Tensor
    e: torch.Tensor
    u: torch.Tensor | None
    u_sum: float


def row_coefficients(target: torch.Tensor, weight: torch.Tensor | None, opts: LossOptions,
                     num_classes: int, dtype: torch.dtype) -> RowCoefficients:
    """Coefficients of the table above for ``(N,)`` class ids (``ignore_index`` rows get zeros)."""
    kept = target != opts.ignore_index
    if weight is None:
        return coefficients_from_rows(kept, None, None, float(num_classes), opts, num_classes,
                                      dtype)
    w = weight.to(dtype)
    safe = torch.where(kept, target, torch.zeros_like(target))
    return coefficients_from_rows(kept, w[safe], w, float(w.sum()), opts, num_classes, dtype)


def coefficients_from_rows(kept: torch.Tensor, row_weight: torch.Tensor | None,
                           class_weight: torch.Tensor | None, u_sum: float, opts: LossOptions,
                           num_classes: int, dtype: torch.dtype) -> RowCoefficients:
    """The table above from per-row data: ``kept`` (N,) bool, ``row_weight = w[y]`` (N,) or None.

    ``class_weight`` is ``u`` in class mode (the whole vector, or the shard's slice of it for the
    vocab-parallel loss, which never holds all of ``w``) and ``u_sum`` is ``U = sum(w)`` over *all*
    classes; both are ignored without weights or in sample mode (``u = 1``, ``U = K``).
    """
    eps = opts.smoothing
    if row_weight is None:
        e = kept.to(dtype)
        return RowCoefficients((1.0 - eps) * e, (eps / num_classes) * e, e, None,
                               float(num_classes))
    e = torch.where(kept, row_weight.to(dtype), torch.zeros((), dtype=dtype, device=kept.device))
    if opts.weight_mode == "class":
        return RowCoefficients((1.0 - eps) * e, (eps / num_classes) * kept.to(dtype), e,
                               class_weight, float(u_sum))
    return RowCoefficients((1.0 - eps) * e, (eps / num_classes) * e, e, None, float(num_classes))


def loss_from_stats(lse: torch.Tensor, zy: torch.Tensor, sz: torch.Tensor,
                    coef: RowCoefficients, z_loss: float) -> torch.Tensor:
    """Per-row loss ``(b + c U) lse - b zy - c sz + zl e lse^2``; exact 0 on ignored rows."""
    kept = coef.e != 0
    lse = torch.where(kept | (coef.c != 0), lse, torch.zeros_like(lse))
    loss = (coef.b + coef.c * coef.u_sum) * lse - _times(coef.b, zy) - _times(coef.c, sz)
    if z_loss:
        loss = loss + z_loss * coef.e * lse * lse
    return loss


def grad_row_scale(lse: torch.Tensor, coef: RowCoefficients, z_loss: float) -> torch.Tensor:
    """``a = b + c U + 2 zl e lse``, the factor of ``softmax`` in the row's gradient."""
    a = coef.b + coef.c * coef.u_sum
    if z_loss:
        a = a + 2.0 * z_loss * coef.e * torch.where(coef.e != 0, lse, torch.zeros_like(lse))
    return a


def mean_denominator(coef: RowCoefficients) -> torch.Tensor:
    """``sum_i e_i``: kept rows, or the sum of ``w[y]`` over them."""
    return coef.e.sum()


def reduction_scale(coef: RowCoefficients, reduction: str) -> torch.Tensor | float:
    """What the per-row gradient is multiplied by: ``1/sum(e)`` for ``mean`` (0 if that is 0)."""
    if reduction != "mean":
        return 1.0
    denom = mean_denominator(coef)
    return torch.where(denom == 0, torch.zeros_like(denom), 1.0 / torch.where(denom == 0, 1.0, denom))


def reduce_rows(per_row: torch.Tensor, reduction: str, scale: torch.Tensor | float) -> torch.Tensor:
    """Apply ``reduction`` to per-row losses with the :func:`reduction_scale` ``scale`` of the mean."""
    if reduction == "none":
        return per_row
    total = per_row.sum()
    return total * scale if reduction == "mean" else total


def _times(factor: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``factor * value`` with 0 where ``factor`` is 0 (so 0 * -inf is 0, not NaN)."""
    return torch.where(factor == 0, torch.zeros_like(value), factor * value)
