r"""Beyond uniform smoothing: the label-smoothing variants practitioners ask for.

Every loss here takes logits ``z`` (``(N, C)``, ``(N, C, d1, ...)`` with ``dim=1``, or ``(..., C)``
with ``dim=-1``) and class ids (``ignore_index`` allowed) -- some also probability targets -- and
supports ``reduction="mean" | "sum" | "none"`` with the library's rules: ignored elements contribute
an exact 0 to the loss and the gradient and are left out of the mean's denominator (a mean over no
kept element is 0); ``"none"`` returns the target's shape. float32 inputs are computed in float32,
float64 in float64 (half precision is accumulated in float32 and gives a float32 loss, as the core).

Notation for one element: ``p = softmax(z)``, ``y`` the target, ``q`` the target distribution,
``q = (1-eps) onehot(y) + eps/C`` unless a variant says otherwise. The cross-entropy parts are
computed by :func:`labelsmooth.cross_entropy` (class ids, or probability targets ``q``); only the
extra terms are written here.

* :class:`OnlineLabelSmoothing` -- ``CE(z, a onehot(y) + (1-a) S[y])`` with ``S`` learnt from the
  previous epoch's correct predictions (Zhang et al. 2021).
* :func:`confidence_penalty` -- ``CE(z, q) - beta H(p)`` (Pereyra et al. 2017).
* :func:`label_relaxation` -- ``0`` if ``p_y >= 1-alpha`` else ``KL(q* || p)`` (Lienen &
  Hüllermeier 2021).
* :func:`focal_loss` -- ``-sum_c q_c (1-p_c)^gamma log p_c`` (Lin et al. 2017).
* :func:`poly1_loss` -- ``CE(z, q) + epsilon1 (1 - sum_c q_c p_c)`` (Leng et al. 2022).
* :func:`prior_smoothing` -- ``CE(z, (1-eps) onehot(y) + eps pi)`` (Szegedy et al. 2016's general
  ``u(k)``; Pereyra et al. 2017's "unigram" smoothing).
* :func:`mix_targets` -- mixup / CutMix soft targets ``lam LS(a) + (1-lam) LS(b)``, smoothed once.

:data:`VARIANTS` maps the ``labelsmooth compare --losses`` names to factories
``factory(num_classes, smoothing, **params) -> nn.Module``; every module has ``on_epoch_end()``
(a no-op except for :class:`OnlineLabelSmoothing`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from . import functional as F
from ._options import REDUCTIONS, check_choice, check_nonnegative, check_unit_interval
from .backends.reference import accumulation_dtype
from .backends.reference import reduce as _reduce_rows

__all__ = [
    "VARIANTS",
    "ConfidencePenaltyLoss",
    "FocalLoss",
    "LabelRelaxationLoss",
    "OnlineLabelSmoothing",
    "PolyLoss",
    "PriorSmoothingLoss",
    "class_frequencies",
    "confidence_penalty",
    "focal_loss",
    "label_relaxation",
    "mix_targets",
    "poly1_loss",
    "prior_smoothing",
]

PRIOR_ATOL = 1e-5
"""How far ``sum(prior)`` may be from 1 (float32 label frequencies are off by ~1e-7 per class)."""


# --------------------------------------------------------------------------------------------------
# Argument checks


def _real(name: str, value: object, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {allowed}, got {type(value).__name__} {value!r}")
    return float(value)


def check_half_open_unit(name: str, value: object) -> float:
    """A float in ``[0, 1)`` (label relaxation's alpha)."""
    value = _real(name, value, "a float in [0, 1)")
    if math.isnan(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value!r} is out of range; allowed: a float in [0, 1)")
    return value


def check_finite(name: str, value: object) -> float:
    """Any finite float (PolyLoss's epsilon1 may be negative)."""
    value = _real(name, value, "a finite float")
    if not math.isfinite(value):
        raise ValueError(f"{name}={value!r} is not allowed; allowed: a finite float")
    return value


def check_prior(prior: object, num_classes: int) -> torch.Tensor:
    """A distribution over ``num_classes`` classes as a float64 tensor: 1-D, length C, finite,
    non-negative, summing to 1 within :data:`PRIOR_ATOL` (it is never renormalised silently)."""
    if isinstance(prior, torch.Tensor):
        if not prior.is_floating_point():
            raise TypeError(f"prior has dtype {prior.dtype}; allowed: a floating-point tensor")
        values = prior.detach().to(torch.float64)
    elif isinstance(prior, Sequence) and not isinstance(prior, str):
        try:
            values = torch.tensor([float(v) for v in prior], dtype=torch.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"prior must be a sequence of floats or a tensor, got "
                            f"{prior!r}") from exc
    else:
        raise TypeError(f"prior must be a 1-D float tensor or a sequence of floats, got "
                        f"{type(prior).__name__}")
    if values.dim() != 1 or values.numel() != num_classes:
        raise ValueError(f"prior has shape {tuple(values.shape)}; allowed: ({num_classes},), a "
                         f"distribution over the {num_classes} classes")
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"prior={values.tolist()} contains NaN or inf; allowed: finite "
                         f"probabilities >= 0 summing to 1")
    if bool((values < 0).any()):
        raise ValueError(f"prior={values.tolist()} has a negative entry; allowed: probabilities "
                         f">= 0 summing to 1")
    total = float(values.sum())
    if abs(total - 1.0) > PRIOR_ATOL:
        raise ValueError(f"prior sums to {total!r}; allowed: probabilities summing to 1 "
                         f"(within {PRIOR_ATOL})")
    return values


def _check_num_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} is not allowed; allowed: an int >= 1")
    return num_classes


# --------------------------------------------------------------------------------------------------
# Shared plumbing: flatten and check like the core, reduce like the core


class _Flat(NamedTuple):
    z: torch.Tensor            # (N, C) logits in the accumulation dtype; ignored rows zeroed
    target: torch.Tensor       # (N,) class ids or (N, C) probabilities (accumulation dtype)
    kept: torch.Tensor         # (N,) bool
    safe: torch.Tensor | None  # (N,) class ids with ignored rows set to 0 (None for probabilities)
    out_shape: tuple[int, ...]
    reduction: str
    out_dtype: torch.dtype


def _flatten(input: torch.Tensor, target: torch.Tensor, *, ignore_index: int, reduction: str,
             label_smoothing: float, dim: int, name: str, allow_probs: bool = True) -> _Flat:
    """Check every argument with the core's rules (:func:`labelsmooth.functional.prepare`)."""
    flat_input, flat_target, _, opts, out_shape = F.prepare(
        input, target, None, ignore_index=ignore_index, reduction=reduction,
        label_smoothing=label_smoothing, convention="uniform", weight_mode="class", dim=dim,
        z_loss=0.0)
    acc = accumulation_dtype(input.dtype)
    z = flat_input.to(acc)
    if flat_target.is_floating_point():
        if not allow_probs:
            raise TypeError(f"{name} needs class-index targets; got a probability target of dtype "
                            f"{target.dtype} (allowed: integer class ids)")
        kept = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
        return _Flat(z, flat_target.to(acc), kept, None, out_shape, opts.reduction,
                     F.output_dtype(input.dtype))
    kept = flat_target != ignore_index
    # Ignored rows may hold anything (-inf padding too): zero them so no NaN reaches autograd.
    z = torch.where(kept.unsqueeze(-1), z, torch.zeros_like(z))
    safe = torch.where(kept, flat_target, torch.zeros_like(flat_target))
    return _Flat(z, flat_target, kept, safe, out_shape, opts.reduction, F.output_dtype(input.dtype))


def _finish(per_row: torch.Tensor, flat: _Flat) -> torch.Tensor:
    """Zero the ignored rows (loss and gradient), reduce, reshape ``none``, cast."""
    per_row = torch.where(flat.kept, per_row, torch.zeros_like(per_row))
    loss = _reduce_rows(per_row, flat.kept.to(per_row.dtype), flat.reduction)
    if flat.reduction == "none":
        loss = loss.reshape(flat.out_shape)
    return loss.to(flat.out_dtype)


def _onehot(safe: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One-hot ``(N, C)`` of ``(N,)`` class ids in ``like``'s dtype and class count."""
    return torch.nn.functional.one_hot(safe, like.shape[-1]).to(like.dtype)


def _smoothed_target(flat: _Flat, eps: float, prior: torch.Tensor | None = None) -> torch.Tensor:
    """``q = (1 - eps) t + eps u`` with ``t`` the one-hot (or probability) target and ``u`` the
    uniform distribution or ``prior``; ignored rows hold a valid distribution (masked later)."""
    base = flat.target if flat.safe is None else _onehot(flat.safe, flat.z)
    u = 1.0 / flat.z.shape[-1] if prior is None else prior.to(base)
    return (1.0 - eps) * base + eps * u


def _smoothed_ce(flat: _Flat, eps: float) -> torch.Tensor:
    """Per-row smoothed cross-entropy by the core (class ids: the fused path; no ``q`` is built)."""
    if flat.safe is None:
        return F.cross_entropy(flat.z, flat.target, label_smoothing=eps, reduction="none")
    return F.cross_entropy(flat.z, flat.safe, label_smoothing=eps, reduction="none")


def _entropy(z: torch.Tensor) -> torch.Tensor:
    """``H(p) = -sum_c p_c log p_c`` per row, with ``0 log 0 = 0`` (``-inf`` logits give no NaN)."""
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    return -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)


# --------------------------------------------------------------------------------------------------
# Functional forms


def confidence_penalty(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    dim: int = 1,
) -> torch.Tensor:
    r"""Confidence penalty (Pereyra et al. 2017, "Regularizing Neural Networks by Penalizing
    Confident Output Distributions"): cross-entropy minus ``beta`` times the prediction's entropy,

    .. math:: \ell = \operatorname{CE}(z, q) - \beta H(p), \qquad
              H(p) = -\textstyle\sum_c p_c \log p_c, \qquad
              \partial\ell/\partial z_k = p_k - q_k + \beta\, p_k (\log p_k + H(p))

    with ``q`` the uniformly smoothed target (``label_smoothing=0`` gives the paper's plain CE).
    ``beta >= 0``; ``beta = 0`` is :func:`labelsmooth.cross_entropy`. The paper tunes ``beta`` per
    task; 0.1 is this library's default. Class ids or probability targets.
    """
    beta = check_nonnegative("beta", beta)
    flat = _flatten(input, target, ignore_index=ignore_index, reduction=reduction,
                    label_smoothing=label_smoothing, dim=dim, name="confidence_penalty")
    per_row = _smoothed_ce(flat, label_smoothing)
    if beta:
        per_row = per_row - beta * _entropy(flat.z)
    return _finish(per_row, flat)


def label_relaxation(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 0.1,
    ignore_index: int = -100,
    reduction: str = "mean",
    dim: int = 1,
) -> torch.Tensor:
    r"""Label relaxation (Lienen & Hüllermeier 2021, "From Label Smoothing to Label Relaxation").

    The target is the credal set :math:`Q_\alpha = \{q : q_y \ge 1-\alpha\}`. The loss is the KL
    divergence from the closest member, zero inside the set:

    .. math::

        \ell = \begin{cases} 0 & p_y \ge 1-\alpha \\
               \operatorname{KL}(q^* \,\|\, p)
               = (1-\alpha)\log\frac{1-\alpha}{p_y} + \alpha\log\frac{\alpha}{1-p_y}
               & p_y < 1-\alpha
               \end{cases}
        \qquad q^*_y = 1-\alpha,\; q^*_c = \alpha\,\frac{p_c}{1-p_y}\;(c \ne y)

    with ``0 log 0 = 0``. Computed as ``CE(z, q*) - H(q*)`` by the core with ``q*`` held constant;
    the gradient ``p - q*`` is the exact derivative of the closed form (``q*`` minimises the KL, so
    its own dependence on ``z`` does not contribute). The loss and its gradient are continuous at
    the boundary and are exactly 0 inside the set. ``alpha`` in ``[0, 1)``; ``alpha = 0`` is plain
    cross-entropy. Class-index targets only.
    """
    alpha = check_half_open_unit("alpha", alpha)
    flat = _flatten(input, target, ignore_index=ignore_index, reduction=reduction,
                    label_smoothing=0.0, dim=dim, name="label_relaxation", allow_probs=False)
    safe = flat.safe
    if safe is None:  # unreachable: _flatten rejects probability targets here
        raise TypeError("label_relaxation needs class-index targets")
    onehot = _onehot(safe, flat.z)
    with torch.no_grad():
        logp_y = torch.log_softmax(flat.z, dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        active = flat.kept & (logp_y.exp() < 1.0 - alpha)
        others = torch.softmax(flat.z.masked_fill(onehot.bool(), -math.inf), dim=-1)
        q_star = (1.0 - alpha) * onehot + alpha * others
        # Rows outside the active set (also C = 1, where `others` is NaN) get a harmless target.
        q_star = torch.where(active.unsqueeze(-1), q_star, onehot)
        neg_entropy = torch.where(q_star > 0, q_star * torch.log(q_star),
                                  torch.zeros_like(q_star)).sum(-1)
    kl = F.cross_entropy(flat.z, q_star, reduction="none") + neg_entropy
    return _finish(torch.where(active, kl, torch.zeros_like(kl)), flat)


class _FocalRows(torch.autograd.Function):
    """Per-row smoothed focal loss with an analytic, overflow-free gradient.

    Autograd through ``(1-p)^gamma`` gives ``0 * inf = NaN`` at ``p = 1`` for ``gamma < 1``; the
    closed form below has the limit ``p log p / (1-p) -> -1`` built in.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, z: torch.Tensor, q: torch.Tensor,
                gamma: float) -> torch.Tensor:
        logp = torch.log_softmax(z, dim=-1)
        one_minus_p = -torch.expm1(logp)
        w = one_minus_p.pow(gamma)
        terms = torch.where(q == 0, torch.zeros_like(logp), q * w * logp)
        ctx.save_for_backward(logp, q)
        ctx.gamma = gamma
        return -terms.sum(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
                 ) -> tuple[torch.Tensor, None, None]:
        logp, q = ctx.saved_tensors
        gamma = ctx.gamma
        p = logp.exp()
        one_minus_p = -torch.expm1(logp)
        w = one_minus_p.pow(gamma)
        # r = p log p / (1 - p): 0 at p = 0, -1 in the limit p -> 1.
        safe_den = torch.where(one_minus_p > 0, one_minus_p, torch.ones_like(one_minus_p))
        r = torch.where(p > 0, p * torch.where(p > 0, logp, torch.zeros_like(logp)) / safe_den,
                        torch.zeros_like(p))
        r = torch.where(one_minus_p > 0, r, torch.full_like(r, -1.0))
        g = q * w * (1.0 - gamma * r)
        grad = p * g.sum(-1, keepdim=True) - g
        return grad * grad_out.unsqueeze(-1), None, None


def focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = 2.0,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    dim: int = 1,
) -> torch.Tensor:
    r"""Focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection"), smoothed target.

    The modulating factor is applied per class, to every class of the smoothed target:

    .. math:: \ell = -\textstyle\sum_c q_c\,(1-p_c)^\gamma \log p_c, \qquad
              q = (1-\varepsilon)\,\mathrm{onehot}(y) + \varepsilon/C

    (probability targets: ``q = (1-eps) t + eps/C``). With ``g_c = q_c (1-p_c)^gamma
    (1 - gamma p_c log p_c / (1-p_c))`` the gradient is ``dl/dz_k = p_k sum_c g_c - g_k``.
    ``gamma >= 0`` (paper default 2); ``gamma = 0`` is the smoothed cross-entropy. The paper's
    class-balancing ``alpha_t`` is not included (use class weights elsewhere). First-order gradients
    only (no double backward).
    """
    gamma = check_nonnegative("gamma", gamma)
    flat = _flatten(input, target, ignore_index=ignore_index, reduction=reduction,
                    label_smoothing=label_smoothing, dim=dim, name="focal_loss")
    q = _smoothed_target(flat, label_smoothing)
    return _finish(_FocalRows.apply(flat.z, q, gamma), flat)


def poly1_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    epsilon1: float = 1.0,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    dim: int = 1,
) -> torch.Tensor:
    r"""Poly-1 loss (Leng et al. 2022, "PolyLoss: A Polynomial Expansion Perspective of
    Classification Loss Functions") with label smoothing:

    .. math:: \ell = \operatorname{CE}(z, q) + \epsilon_1 (1 - p_t), \qquad
              p_t = \textstyle\sum_c q_c p_c = (1-\varepsilon) p_y + \varepsilon/C

    i.e. under smoothing ``p_t`` is the smoothed target's inner product with the prediction, as in
    the paper's label-smoothed implementation (``pt = sum(labels * softmax(logits))``). ``epsilon1``
    is any finite float (the paper tunes it per task, positive for classification, negative for
    detection); ``epsilon1 = 0`` is the smoothed cross-entropy. Class ids or probability targets.
    """
    epsilon1 = check_finite("epsilon1", epsilon1)
    flat = _flatten(input, target, ignore_index=ignore_index, reduction=reduction,
                    label_smoothing=label_smoothing, dim=dim, name="poly1_loss")
    per_row = _smoothed_ce(flat, label_smoothing)
    if epsilon1:
        p = torch.softmax(flat.z, dim=-1)
        if flat.safe is None:
            p_t = ((1.0 - label_smoothing) * (flat.target * p).sum(-1)
                   + label_smoothing / p.shape[-1])
        else:
            p_y = p.gather(-1, flat.safe.unsqueeze(-1)).squeeze(-1)
            p_t = (1.0 - label_smoothing) * p_y + label_smoothing / p.shape[-1]
        per_row = per_row + epsilon1 * (1.0 - p_t)
    return _finish(per_row, flat)


def prior_smoothing(
    input: torch.Tensor,
    target: torch.Tensor,
    prior: torch.Tensor | Sequence[float],
    *,
    label_smoothing: float = 0.1,
    ignore_index: int = -100,
    reduction: str = "mean",
    dim: int = 1,
) -> torch.Tensor:
    r"""Label smoothing toward a class prior ``pi`` instead of the uniform distribution.

    .. math:: q = (1-\varepsilon)\,\mathrm{onehot}(y) + \varepsilon\,\pi, \qquad
              \ell = \operatorname{CE}(z, q) = \operatorname{lse}(z) - \textstyle\sum_c q_c z_c

    (probability targets ``t``: ``q = (1-eps) t + eps pi``). Szegedy et al. 2016 introduce
    smoothing with a general ``u(k)``; Pereyra et al. 2017 call the label-frequency choice "unigram"
    smoothing.
    ``pi`` must be a distribution over the C classes (1-D, length C, finite, >= 0, summing to 1
    within 1e-5), e.g. :func:`class_frequencies` of the training labels; a uniform ``pi`` is
    :func:`labelsmooth.cross_entropy` with the same ``label_smoothing``. This function checks
    ``prior`` on every call (a host sync on GPU); :class:`PriorSmoothingLoss` checks it once.
    """
    flat = _flatten(input, target, ignore_index=ignore_index, reduction=reduction,
                    label_smoothing=label_smoothing, dim=dim, name="prior_smoothing")
    return _prior_smoothing(flat, check_prior(prior, flat.z.shape[-1]), label_smoothing)


def _prior_smoothing(flat: _Flat, prior: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """:func:`prior_smoothing` with an already checked ``prior``."""
    q = _smoothed_target(flat, label_smoothing, prior.to(flat.z.device))
    return _finish(F.cross_entropy(flat.z, q, reduction="none"), flat)


def class_frequencies(target: torch.Tensor, num_classes: int, *, ignore_index: int = -100
                      ) -> torch.Tensor:
    """Label frequencies ``n_c / sum_c n_c`` (float64, ``ignore_index`` left out): a prior for
    :func:`prior_smoothing`. Raises ``ValueError`` when no label is counted."""
    num_classes = _check_num_classes(num_classes)
    if not isinstance(target, torch.Tensor) or target.is_floating_point() or \
            target.dtype == torch.bool:
        raise TypeError("target must be a tensor of integer class ids")
    flat = target.reshape(-1).long()
    flat = flat[flat != ignore_index]
    F._check_index_target(flat, num_classes, None)
    counts = torch.bincount(flat, minlength=num_classes).to(torch.float64)
    if float(counts.sum()) == 0:
        raise ValueError("target has no (non-ignored) labels; allowed: at least one class id")
    return counts / counts.sum()


def mix_targets(
    target_a: torch.Tensor,
    target_b: torch.Tensor,
    lam: float,
    num_classes: int,
    label_smoothing: float = 0.0,
    *,
    convention: str = "uniform",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""Soft targets for mixup / CutMix, smoothed exactly once.

    .. math:: q = \lambda\,\mathrm{LS}_\varepsilon(a) + (1-\lambda)\,\mathrm{LS}_\varepsilon(b)
              = (1-\varepsilon)\,[\lambda\,\mathrm{onehot}(a) + (1-\lambda)\,\mathrm{onehot}(b)]
                + \varepsilon/C

    (``non_target`` convention: the same with ``LS`` of that convention). Class ids ``(...)`` or
    probabilities ``(..., C)`` in, ``(..., C)`` out; ``lam`` in ``[0, 1]`` (CutMix: 1 minus the
    pasted area's fraction). Then ``cross_entropy(logits, q)`` equals
    ``lam * CE_eps(logits, a) + (1 - lam) * CE_eps(logits, b)``.

    .. warning::
        ``q`` is already smoothed: call the loss with ``label_smoothing=0``. Passing
        ``label_smoothing=eps`` to the loss again smooths twice, giving an effective
        ``1 - (1 - eps)^2 = 2 eps - eps^2`` (0.19 instead of 0.1). ``ignore_index`` has no meaning
        for probability targets; drop such elements before mixing.
    """
    lam = check_unit_interval("lam", lam)
    num_classes = _check_num_classes(num_classes)
    for name, t in (("target_a", target_a), ("target_b", target_b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if target_a.shape != target_b.shape:
        raise ValueError(f"target_b has shape {tuple(target_b.shape)}; allowed: target_a's shape "
                         f"{tuple(target_a.shape)}")
    qa = F.smooth_targets(target_a, num_classes, label_smoothing, convention=convention,
                          dtype=dtype)
    qb = F.smooth_targets(target_b, num_classes, label_smoothing, convention=convention,
                          dtype=dtype)
    return lam * qa + (1.0 - lam) * qb


# --------------------------------------------------------------------------------------------------
# Modules


class _VariantLoss(torch.nn.Module):
    """Common base: the reduction/ignore/dim settings and a no-op per-epoch hook."""

    def __init__(self, *, ignore_index: int, reduction: str, dim: int) -> None:
        super().__init__()
        check_choice("reduction", reduction, REDUCTIONS)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.dim = dim

    def on_epoch_end(self) -> None:
        """Called once after every training epoch; stateless losses do nothing."""

    def _common(self) -> dict[str, object]:
        return {"ignore_index": self.ignore_index, "reduction": self.reduction, "dim": self.dim}


class ConfidencePenaltyLoss(_VariantLoss):
    """Module form of :func:`confidence_penalty` (``CE(z, q) - beta H(p)``)."""

    def __init__(self, beta: float = 0.1, *, label_smoothing: float = 0.0,
                 ignore_index: int = -100, reduction: str = "mean", dim: int = 1) -> None:
        super().__init__(ignore_index=ignore_index, reduction=reduction, dim=dim)
        self.beta = check_nonnegative("beta", beta)
        self.label_smoothing = check_unit_interval("label_smoothing", label_smoothing)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return confidence_penalty(input, target, beta=self.beta,
                                  label_smoothing=self.label_smoothing, **self._common())

    def extra_repr(self) -> str:
        return f"beta={self.beta}, label_smoothing={self.label_smoothing}"


class LabelRelaxationLoss(_VariantLoss):
    """Module form of :func:`label_relaxation` (0 once ``p_y >= 1-alpha``, else ``KL(q*||p)``)."""

    def __init__(self, alpha: float = 0.1, *, ignore_index: int = -100, reduction: str = "mean",
                 dim: int = 1) -> None:
        super().__init__(ignore_index=ignore_index, reduction=reduction, dim=dim)
        self.alpha = check_half_open_unit("alpha", alpha)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return label_relaxation(input, target, alpha=self.alpha, **self._common())

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class FocalLoss(_VariantLoss):
    """Module form of :func:`focal_loss` (``-sum_c q_c (1-p_c)^gamma log p_c``)."""

    def __init__(self, gamma: float = 2.0, *, label_smoothing: float = 0.0,
                 ignore_index: int = -100, reduction: str = "mean", dim: int = 1) -> None:
        super().__init__(ignore_index=ignore_index, reduction=reduction, dim=dim)
        self.gamma = check_nonnegative("gamma", gamma)
        self.label_smoothing = check_unit_interval("label_smoothing", label_smoothing)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_loss(input, target, gamma=self.gamma, label_smoothing=self.label_smoothing,
                          **self._common())

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, label_smoothing={self.label_smoothing}"


class PolyLoss(_VariantLoss):
    """Module form of :func:`poly1_loss` (``CE(z, q) + epsilon1 (1 - sum_c q_c p_c)``)."""

    def __init__(self, epsilon1: float = 1.0, *, label_smoothing: float = 0.0,
                 ignore_index: int = -100, reduction: str = "mean", dim: int = 1) -> None:
        super().__init__(ignore_index=ignore_index, reduction=reduction, dim=dim)
        self.epsilon1 = check_finite("epsilon1", epsilon1)
        self.label_smoothing = check_unit_interval("label_smoothing", label_smoothing)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return poly1_loss(input, target, epsilon1=self.epsilon1,
                          label_smoothing=self.label_smoothing, **self._common())

    def extra_repr(self) -> str:
        return f"epsilon1={self.epsilon1}, label_smoothing={self.label_smoothing}"


class PriorSmoothingLoss(_VariantLoss):
    """Module form of :func:`prior_smoothing`; ``prior`` is checked once and kept as a float64
    buffer (in ``state_dict``)."""

    prior: torch.Tensor

    def __init__(self, prior: torch.Tensor | Sequence[float], *, label_smoothing: float = 0.1,
                 ignore_index: int = -100, reduction: str = "mean", dim: int = 1) -> None:
        super().__init__(ignore_index=ignore_index, reduction=reduction, dim=dim)
        if isinstance(prior, torch.Tensor):
            num = prior.numel()
        else:
            num = len(prior) if isinstance(prior, Sequence) else 0
        self.register_buffer("prior", check_prior(prior, num))
        self.label_smoothing = check_unit_interval("label_smoothing", label_smoothing)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flat = _flatten(input, target, ignore_index=self.ignore_index, reduction=self.reduction,
                        label_smoothing=self.label_smoothing, dim=self.dim,
                        name="PriorSmoothingLoss")
        if flat.z.shape[-1] != self.prior.numel():
            raise ValueError(f"input has {flat.z.shape[-1]} classes; allowed: the prior's "
                             f"{self.prior.numel()}")
        return _prior_smoothing(flat, self.prior, self.label_smoothing)

    def extra_repr(self) -> str:
        return f"num_classes={self.prior.numel()}, label_smoothing={self.label_smoothing}"


class OnlineLabelSmoothing(_VariantLoss):
    r"""Online label smoothing (Zhang et al. 2021, "Delving Deep into Label Smoothing").

    A soft-target matrix ``S`` (``C x C``, row ``y`` = the target distribution of class ``y``) is
    learnt from the model's own predictions:

    .. math::

        q = \alpha\,\mathrm{onehot}(y) + (1-\alpha)\,S^{(t-1)}_y, \qquad
        \ell = \operatorname{CE}(z, q), \qquad
        S^{(t)}_c = \frac{1}{|A_c|}\sum_{i \in A_c} \operatorname{softmax}(z_i)

    where ``A_c`` are the training elements of epoch ``t`` with target ``c`` that the model
    classified correctly (``argmax_k z_k = c``, first maximum on ties). ``alpha`` in ``[0, 1]``
    weighs the hard target (paper default 0.5; ``alpha = 1`` is plain cross-entropy after the first
    epoch).

    * **First epoch** (no completed epoch yet): plain uniform label smoothing,
      ``q = (1-eps) onehot(y) + eps/C`` with ``eps = label_smoothing``. ``S^(0)`` is that matrix.
    * **State**: forward calls accumulate ``softmax(z)`` of the correct elements while
      ``self.training`` (``module.eval()`` stops that); :meth:`on_epoch_end` swaps in the new ``S``
      and starts a new accumulation. A class with no correctly classified element in the epoch keeps
      its previous row. ``S``, the running sums, the counts and the number of completed epochs are
      buffers: saved in ``state_dict``, moved by ``.to()``. They are float64 by default (``dtype``;
      a ``C x C`` matrix is small, and sums over a whole epoch stay exact; pass ``torch.float32``
      on devices without float64). Accumulation runs under ``no_grad`` and costs no host sync.
    * The loss is :func:`labelsmooth.cross_entropy` with the probability target ``q``. Class-index
      targets only; ``ignore_index`` elements are neither trained on nor counted.
    """

    soft_targets: torch.Tensor
    running_sum: torch.Tensor
    running_count: torch.Tensor
    epochs_completed: torch.Tensor

    def __init__(self, num_classes: int, *, alpha: float = 0.5, label_smoothing: float = 0.1,
                 ignore_index: int = -100, reduction: str = "mean", dim: int = 1,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__(ignore_index=ignore_index, reduction=reduction, dim=dim)
        self.num_classes = _check_num_classes(num_classes)
        self.alpha = check_unit_interval("alpha", alpha)
        self.label_smoothing = check_unit_interval("label_smoothing", label_smoothing)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype={dtype!r} is not allowed; allowed: a floating-point "
                            f"torch.dtype")
        eye = torch.eye(num_classes, dtype=dtype)
        eps = self.label_smoothing
        self.register_buffer("soft_targets", (1.0 - eps) * eye + eps / num_classes)
        self.register_buffer("running_sum", torch.zeros(num_classes, num_classes, dtype=dtype))
        self.register_buffer("running_count", torch.zeros(num_classes, dtype=dtype))
        self.register_buffer("epochs_completed", torch.zeros((), dtype=torch.long))

    def targets(self, target: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The current soft targets ``q`` ``(N, C)`` of class ids ``target`` ``(N,)``."""
        dtype = self.soft_targets.dtype if dtype is None else dtype
        onehot = torch.nn.functional.one_hot(target.long(), self.num_classes).to(dtype)
        hard = torch.where(self.epochs_completed > 0,
                           torch.tensor(self.alpha, dtype=dtype, device=onehot.device),
                           torch.tensor(0.0, dtype=dtype, device=onehot.device))
        return hard * onehot + (1.0 - hard) * self.soft_targets.to(dtype)[target.long()]

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flat = _flatten(input, target, ignore_index=self.ignore_index, reduction=self.reduction,
                        label_smoothing=0.0, dim=self.dim, name="OnlineLabelSmoothing",
                        allow_probs=False)
        if flat.z.shape[-1] != self.num_classes:
            raise ValueError(f"input has {flat.z.shape[-1]} classes; allowed: num_classes="
                             f"{self.num_classes}")
        if self.training:
            self._accumulate(flat)
        q = self.targets(flat.safe, flat.z.dtype)
        return _finish(F.cross_entropy(flat.z, q, reduction="none"), flat)

    @torch.no_grad()
    def _accumulate(self, flat: _Flat) -> None:
        p = torch.softmax(flat.z.detach(), dim=-1)
        correct = (flat.kept & (p.argmax(dim=-1) == flat.safe)).to(p.dtype)
        sums = self.running_sum
        sums.index_add_(0, flat.safe, (p * correct.unsqueeze(-1)).to(sums.dtype))
        self.running_count.index_add_(0, flat.safe, correct.to(sums.dtype))

    @torch.no_grad()
    def on_epoch_end(self) -> None:
        """``S <- per-class mean softmax of this epoch's correct elements`` (a class without any
        keeps its row); reset the accumulators; count the epoch."""
        seen = self.running_count > 0
        mean = self.running_sum / torch.where(seen, self.running_count,
                                              torch.ones_like(self.running_count)).unsqueeze(-1)
        self.soft_targets.copy_(torch.where(seen.unsqueeze(-1), mean, self.soft_targets))
        self.running_sum.zero_()
        self.running_count.zero_()
        self.epochs_completed += 1

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, alpha={self.alpha}, "
                f"label_smoothing={self.label_smoothing}")


# --------------------------------------------------------------------------------------------------
# The registry for `labelsmooth compare --losses`


def _no_extra(name: str, params: dict[str, object], allowed: tuple[str, ...]) -> None:
    extra = sorted(set(params) - set(allowed))
    if extra:
        raise TypeError(f"variant {name!r} got unknown parameter(s) {', '.join(extra)}; allowed: "
                        f"{', '.join(allowed) or 'none'}")


def _make_online(num_classes: int, smoothing: float, **params: object) -> torch.nn.Module:
    _no_extra("online", params, ("alpha", "ignore_index", "reduction", "dim", "dtype"))
    return OnlineLabelSmoothing(num_classes, label_smoothing=smoothing, **params)  # type: ignore[arg-type]


def _make_confidence_penalty(num_classes: int, smoothing: float, **params: object
                             ) -> torch.nn.Module:
    _check_num_classes(num_classes)
    _no_extra("confidence_penalty", params, ("beta", "ignore_index", "reduction", "dim"))
    return ConfidencePenaltyLoss(label_smoothing=smoothing, **params)  # type: ignore[arg-type]


def _make_label_relaxation(num_classes: int, smoothing: float, **params: object
                           ) -> torch.nn.Module:
    _check_num_classes(num_classes)
    _no_extra("label_relaxation", params, ("alpha", "ignore_index", "reduction", "dim"))
    params.setdefault("alpha", smoothing)
    return LabelRelaxationLoss(**params)  # type: ignore[arg-type]


def _make_focal(num_classes: int, smoothing: float, **params: object) -> torch.nn.Module:
    _check_num_classes(num_classes)
    _no_extra("focal", params, ("gamma", "ignore_index", "reduction", "dim"))
    return FocalLoss(label_smoothing=smoothing, **params)  # type: ignore[arg-type]


def _make_poly(num_classes: int, smoothing: float, **params: object) -> torch.nn.Module:
    _check_num_classes(num_classes)
    _no_extra("poly", params, ("epsilon1", "ignore_index", "reduction", "dim"))
    return PolyLoss(label_smoothing=smoothing, **params)  # type: ignore[arg-type]


def _make_prior(num_classes: int, smoothing: float, **params: object) -> torch.nn.Module:
    _check_num_classes(num_classes)
    _no_extra("prior", params, ("prior", "ignore_index", "reduction", "dim"))
    if "prior" not in params:
        raise ValueError("variant 'prior' needs prior=<distribution over the classes>, e.g. "
                         "labelsmooth.variants.class_frequencies(train_targets, num_classes)")
    prior = check_prior(params.pop("prior"), num_classes)
    return PriorSmoothingLoss(prior, label_smoothing=smoothing, **params)  # type: ignore[arg-type]


VARIANTS: dict[str, Callable[..., torch.nn.Module]] = {
    "online": _make_online,
    "confidence_penalty": _make_confidence_penalty,
    "label_relaxation": _make_label_relaxation,
    "focal": _make_focal,
    "poly": _make_poly,
    "prior": _make_prior,
}
"""``--losses`` name -> ``factory(num_classes, smoothing, **params) -> nn.Module``.

The module's forward is ``(logits (N, C), target (N,)) -> scalar loss`` (reduction ``mean``) and it
has ``on_epoch_end()``; call it after every training epoch (it matters for ``online``). What
``smoothing`` means and the defaults of ``params``:

* ``online``: ``smoothing`` = eps of the first epoch's uniform smoothing; ``alpha=0.5`` (paper).
* ``confidence_penalty``: ``smoothing`` on the CE part (0 = the paper's form); ``beta=0.1``.
* ``label_relaxation``: ``alpha`` defaults to ``smoothing`` (the credal set's width plays the role
  of eps); no other smoothing is applied.
* ``focal``: smoothed target with eps = ``smoothing``; ``gamma=2.0`` (paper).
* ``poly``: smoothed target with eps = ``smoothing``; ``epsilon1=1.0``.
* ``prior``: eps = ``smoothing`` toward ``prior`` (required: a distribution over the classes).
"""
