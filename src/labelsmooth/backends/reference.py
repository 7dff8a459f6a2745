"""Plain-torch autograd backend: the executable specification.

It builds the dense smoothed target ``q`` (N x K) and evaluates, per row ``i``,

    l_i = sum_c a_ic (lse_i - z_ic) + z_loss * s_i * lse_i^2

with ``a_ic = w_c q_ic`` (class weights), ``a_ic = w_{y_i} q_ic`` (sample weights) or ``a_ic = q_ic``,
and ``s_i`` the element's weight (``w_{y_i}``, or 1). Readable and slow by design; every other backend
is tested against it.
"""

from __future__ import annotations

import torch

from .._options import LossOptions


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64; everything else is accumulated in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def element_weights(
    target: torch.Tensor, weight: torch.Tensor | None, opts: LossOptions, dtype: torch.dtype
) -> torch.Tensor:
    """Per-row weight used by the z-loss term and the mean denominator.

    Index targets: ``w[y]`` (1 without weights), 0 for ignored rows. Probability targets: 1.
    """
    if target.is_floating_point():
        return torch.ones(target.shape[0], dtype=dtype, device=target.device)
    kept = target != opts.ignore_index
    if weight is None:
        return kept.to(dtype)
    safe = torch.where(kept, target, torch.zeros_like(target))
    return torch.where(kept, weight.to(dtype)[safe], torch.zeros((), dtype=dtype, device=target.device))


def dense_target(target: torch.Tensor, num_classes: int, opts: LossOptions,
                 dtype: torch.dtype) -> torch.Tensor:
    """The smoothed target distribution q (N x K); rows of ignored targets are all zero."""
    eps = opts.smoothing
    if target.is_floating_point():
        return (1.0 - eps) * target.to(dtype) + eps / num_classes
    kept = target != opts.ignore_index
    safe = torch.where(kept, target, torch.zeros_like(target))
    onehot = torch.nn.functional.one_hot(safe, num_classes).to(dtype)
    q = (1.0 - eps) * onehot + eps / num_classes
    return q * kept.unsqueeze(-1).to(dtype)


def reduce(per_row: torch.Tensor, denominator: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply ``reduction``; a mean over zero total weight is 0 (torch would give NaN)."""
    if reduction == "none":
        return per_row
    total = per_row.sum()
    if reduction == "sum":
        return total
    denominator = denominator.sum()
    empty = denominator == 0
    return torch.where(empty, torch.zeros_like(total), total / torch.where(empty, 1.0, denominator))


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, opts: LossOptions
) -> torch.Tensor:
    """Loss of (N, K) logits; ``target`` is (N,) class ids or (N, K) probabilities."""
    acc = accumulation_dtype(logits.dtype)
    z = logits.to(acc)
    if not target.is_floating_point():
        # Ignored rows may hold anything (all -inf padding too): zero them so no NaN reaches autograd.
        z = torch.where((target != opts.ignore_index).unsqueeze(-1), z, torch.zeros_like(z))
    num_classes = z.shape[-1]
    q = dense_target(target, num_classes, opts, acc)
    row_w = element_weights(target, weight, opts, acc)

    if weight is None:
        coef = q
    elif opts.weight_mode == "class":
        coef = q * weight.to(acc)
    else:
        coef = q * row_w.unsqueeze(-1)

    lse = torch.logsumexp(z, dim=-1)
    # lse - z >= 0 (may be +inf for a -inf logit); skip zero coefficients so 0 * inf never appears.
    terms = lse.unsqueeze(-1) - z
    per_row = torch.where(coef == 0, torch.zeros_like(terms), coef * terms).sum(-1)
    if opts.z_loss:
        per_row = per_row + opts.z_loss * row_w * torch.where(row_w == 0, 0.0, lse) ** 2
    return reduce(per_row, row_w, opts.reduction)
