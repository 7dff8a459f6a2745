"""Calibration metrics: ECE, reliability bins, temperature scaling, confidence gap, logit gap.

Everything here works on a batch of logits ``(N, K)`` (or probabilities, where said) and class-index
targets ``(N,)``; it imports torch only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "ReliabilityBins",
    "confidence_gap",
    "expected_calibration_error",
    "fit_temperature",
    "logit_gap",
    "nll",
    "reliability_bins",
]


def _check_pair(name: str, scores: torch.Tensor, target: torch.Tensor) -> None:
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or not scores.is_floating_point():
        raise ValueError(f"{name} must be a float tensor of shape (N, K), got "
                         f"{getattr(scores, 'shape', type(scores).__name__)}")
    if not isinstance(target, torch.Tensor) or target.dim() != 1 or target.shape[0] != scores.shape[0]:
        raise ValueError(f"target must be a class-index tensor of shape ({scores.shape[0]},), got "
                         f"{getattr(target, 'shape', type(target).__name__)}")
    if scores.shape[0] == 0:
        raise ValueError(f"{name} is empty; calibration metrics need at least one sample")


def _check_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins={n_bins!r} is not allowed; allowed: an int >= 1")
    return n_bins


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of a reliability diagram (``n_bins`` equal-width bins on ``[0, 1]``).

    ``count[m]`` samples have top-1 confidence in bin ``m``; ``confidence[m]`` and ``accuracy[m]`` are
    their mean confidence and accuracy (0 for an empty bin). ``edges`` has ``n_bins + 1`` entries.
    """

    edges: torch.Tensor
    count: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor

    @property
    def ece(self) -> float:
        """``sum_m |B_m|/N * |acc(B_m) - conf(B_m)|``."""
        total = float(self.count.sum())
        return float((self.count / total * (self.accuracy - self.confidence).abs()).sum())


def reliability_bins(probs: torch.Tensor, target: torch.Tensor, n_bins: int = 15) -> ReliabilityBins:
    r"""Bin samples by top-1 confidence into ``n_bins`` equal-width bins (Guo et al. 2017).

    With :math:`\hat p_i = \max_c p_{ic}` and :math:`\hat y_i = \arg\max_c p_{ic}`, bin
    :math:`m \in \{1..M\}` holds the samples with :math:`\hat p_i \in ((m-1)/M,\; m/M]` (a confidence of
    exactly 0 goes to the first bin). For each bin, :math:`\mathrm{acc}(B_m) = |B_m|^{-1}
    \sum_{i\in B_m} [\hat y_i = y_i]` and :math:`\mathrm{conf}(B_m) = |B_m|^{-1} \sum_{i\in B_m}
    \hat p_i`. Computed in float64.

    Args:
        probs: predicted probabilities ``(N, K)`` (rows sum to 1; use ``logits.softmax(1)``).
        target: class ids ``(N,)``.
        n_bins: number of equal-width bins ``M``.
    """
    _check_pair("probs", probs, target)
    n_bins = _check_bins(n_bins)
    conf, pred = probs.detach().double().max(dim=1)
    correct = (pred == target.to(pred.device)).double()
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=conf.device)
    # bucketize(right=False) gives i with edges[i-1] < v <= edges[i] on the inner edges: Guo's (a, b].
    index = torch.bucketize(conf, edges[1:-1], right=False)
    count = torch.zeros(n_bins, dtype=torch.float64, device=conf.device).index_add_(
        0, index, torch.ones_like(conf))
    conf_sum = torch.zeros_like(count).index_add_(0, index, conf)
    acc_sum = torch.zeros_like(count).index_add_(0, index, correct)
    safe = count.clamp_min(1.0)
    return ReliabilityBins(edges=edges.cpu(), count=count.cpu(), confidence=(conf_sum / safe).cpu(),
                           accuracy=(acc_sum / safe).cpu())


def expected_calibration_error(logits: torch.Tensor, target: torch.Tensor, n_bins: int = 15) -> float:
    r"""Expected calibration error of the top-1 prediction, Guo et al. 2017 (eq. 3).

    .. math:: \mathrm{ECE} = \sum_{m=1}^{M} \frac{|B_m|}{N}\,
              \bigl|\mathrm{acc}(B_m) - \mathrm{conf}(B_m)\bigr|

    with ``M = n_bins`` equal-width bins on the top-1 confidence (see :func:`reliability_bins`).
    Equals torchmetrics' ``MulticlassCalibrationError(n_bins=M, norm="l1")`` except for confidences
    lying exactly on a bin edge (torchmetrics bins ``[a, b)``, Guo ``(a, b]``).

    Args:
        logits: ``(N, K)`` logits (softmax is applied here).
        target: class ids ``(N,)``.
        n_bins: number of bins ``M`` (15 as in Guo et al.).
    """
    _check_pair("logits", logits, target)
    return reliability_bins(logits.detach().double().softmax(dim=1), target, n_bins).ece


def nll(logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> float:
    r"""Mean negative log-likelihood :math:`\frac1N\sum_i \operatorname{lse}(z_i/T) - z_{i,y_i}/T`."""
    _check_pair("logits", logits, target)
    z = logits.detach().double() / float(temperature)
    return float(torch.nn.functional.cross_entropy(z, target.to(z.device)))


def confidence_gap(logits: torch.Tensor, target: torch.Tensor) -> float:
    r"""Signed mean top-1 confidence minus accuracy: :math:`\frac1N\sum_i(\hat p_i - [\hat y_i=y_i])`.

    Positive means over-confident, negative under-confident.
    """
    _check_pair("logits", logits, target)
    conf, pred = logits.detach().double().softmax(dim=1).max(dim=1)
    return float((conf - (pred == target.to(pred.device)).double()).mean())


def logit_gap(logits: torch.Tensor) -> float:
    r"""Mean gap between the top logit and the mean of the other logits.

    .. math:: \frac1N\sum_i \Bigl(z_{i,(1)} - \frac{1}{K-1}\sum_{c \ne (1)} z_{ic}\Bigr)

    Uniform label smoothing with ``eps`` is minimised at a gap of ``log(1 + K(1 - eps)/eps)`` (all
    non-target logits equal), while plain cross-entropy drives it to infinity.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be a float tensor of shape (N, K) with K >= 2, got "
                         f"{getattr(logits, 'shape', type(logits).__name__)}")
    z = logits.detach().double()
    k = z.shape[1]
    top = z.max(dim=1).values
    return float((top - (z.sum(dim=1) - top) / (k - 1)).mean())


def fit_temperature(logits: torch.Tensor, target: torch.Tensor, *, max_iter: int = 100) -> float:
    r"""Temperature scaling (Guo et al. 2017): the ``T > 0`` minimising the NLL of ``softmax(z / T)``.

    .. math:: T^\ast = \arg\min_{T>0} \frac1N \sum_i \operatorname{lse}(z_i/T) - z_{i,y_i}/T

    Optimised over ``log T`` (so ``T`` stays positive) with L-BFGS and a strong-Wolfe line search in
    float64, starting at ``T = 1``. The objective is convex in ``1/T``, so the minimum is unique when it
    exists; if the data are perfectly separated the NLL decreases towards ``T -> 0`` and the result is
    the small ``T`` where L-BFGS stops. Fit it on held-out (validation) logits, never on the test set.

    Args:
        logits: ``(N, K)`` logits of a held-out split.
        target: class ids ``(N,)``.
        max_iter: L-BFGS iterations.
    """
    _check_pair("logits", logits, target)
    z = logits.detach().double().cpu()
    y = target.detach().cpu().long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, tolerance_grad=1e-12,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z * torch.exp(-log_t), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(torch.exp(log_t.detach()))
    if not math.isfinite(t) or t <= 0.0:
        raise ValueError(f"temperature scaling diverged (T={t}); the held-out logits are degenerate")
    return t
