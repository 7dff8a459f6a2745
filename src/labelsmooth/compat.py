"""The four classic label-smoothing formulations of the widely copied reference article.

Each keeps its original constructor and call signature and reproduces its original numbers, but is
computed by :func:`labelsmooth.cross_entropy` (no second copy of the math). How they differ from the
library default (``convention="uniform"``, ``weight_mode="class"``, weighted mean):

=====================================  ===========  ==============================  =================
class                                  smoothing    what ``weight`` multiplies      mean divides by
=====================================  ===========  ==============================  =================
``LabelSmoothingLoss`` (A)             eps/(K-1)    every log-probability (w_c)      N (not sum w[y])
``SmoothCrossEntropyLoss`` (B)         eps/(K-1)    every log-probability (w_c)      N (not sum w[y])
``LinearCombinationLabelSmoothingLoss`` eps/K       the NLL part only                NLL: sum w[y];
(C)                                                                                 smoothing: N
``LabelSmoothing`` (D)                 eps/K        (no weight)                      N
=====================================  ===========  ==============================  =================

Unweighted, A and B equal ``cross_entropy(..., convention="non_target")`` and C and D equal the default
(torch's) loss. With weights, A and B scale every class term by ``w_c`` and so move the minimiser away
from the smoothed target (towards up-weighted classes), and their loss scale follows the weights'
scale; C weights only the NLL part, so an element's effective smoothing depends on ``w[y]`` and its
minimiser moves too. Only D (no weights) and the library's ``weight_mode="sample"`` keep the minimiser
at ``q``.
"""

from __future__ import annotations

import torch

from .functional import cross_entropy

__all__ = [
    "LabelSmoothing",
    "LabelSmoothingLoss",
    "LinearCombinationLabelSmoothingLoss",
    "SmoothCrossEntropyLoss",
]


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction={reduction!r} is not supported; allowed: mean, sum, none")


class LabelSmoothingLoss(torch.nn.Module):
    """Variant A: ``q = 1-eps`` on the target, ``eps/(classes-1)`` elsewhere; ``weight`` multiplies
    the log-probabilities; plain mean over the batch."""

    def __init__(self, classes: int, smoothing: float = 0.0, dim: int = -1,
                 weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.cls = classes
        self.smoothing = smoothing
        self.dim = dim
        self.weight = weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape[self.dim] != self.cls:
            raise ValueError(f"classes={self.cls} but pred has {pred.shape[self.dim]} classes along "
                             f"dim={self.dim}; allowed: classes equal to that size")
        per_sample = cross_entropy(pred, target, self.weight, reduction="none",
                                   label_smoothing=self.smoothing, convention="non_target",
                                   dim=self.dim)
        return per_sample.mean()


class SmoothCrossEntropyLoss(torch.nn.Module):
    """Variant B: the same distribution as A, with ``reduction`` (mean over N, sum, none)."""

    def __init__(self, weight: torch.Tensor | None = None, reduction: str = "mean",
                 smoothing: float = 0.0) -> None:
        super().__init__()
        self.smoothing = smoothing
        self.weight = weight
        self.reduction = reduction

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        per_sample = cross_entropy(inputs, targets, self.weight, reduction="none",
                                   label_smoothing=self.smoothing, convention="non_target",
                                   dim=-1)
        return _reduce(per_sample, self.reduction)


class LinearCombinationLabelSmoothingLoss(torch.nn.Module):
    """Variant C: ``eps * mean_c(-log p_c) + (1 - eps) * NLL``; ``weight`` on the NLL part only."""

    def __init__(self, smoothing: float = 0.1, reduction: str = "mean",
                 weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.smoothing = smoothing
        self.reduction = reduction
        self.weight = weight

    def forward(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # label_smoothing=1 makes q uniform: the loss is mean_c(lse - z_c) = mean_c(-log p_c).
        uniform = _reduce(cross_entropy(preds, target, reduction="none", label_smoothing=1.0,
                                        dim=-1), self.reduction)
        nll = cross_entropy(preds, target, self.weight, reduction=self.reduction, dim=-1)
        return self.smoothing * uniform + (1.0 - self.smoothing) * nll


class LabelSmoothing(torch.nn.Module):
    """Variant D: ``(1 - eps) * NLL + eps * mean_c(-log p_c)``, batch mean: the library default."""

    def __init__(self, smoothing: float = 0.0) -> None:
        super().__init__()
        self.smoothing = smoothing

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(x, target, label_smoothing=self.smoothing, dim=-1)
