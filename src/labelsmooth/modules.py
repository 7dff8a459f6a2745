"""``torch.nn`` modules over :mod:`labelsmooth.functional` (the math lives there)."""

from __future__ import annotations

import torch

from . import _dispatch
from . import functional as F
from ._options import CONVENTIONS, REDUCTIONS, WEIGHT_MODES, check_choice, check_int

__all__ = ["LabelSmoothingCrossEntropy"]


class LabelSmoothingCrossEntropy(torch.nn.Module):
    """Drop-in for :class:`torch.nn.CrossEntropyLoss`; see :func:`labelsmooth.cross_entropy`.

    ``weight`` is a buffer (it follows ``.to(device)`` and is saved in ``state_dict``). Arguments are
    checked here, at construction, as well as on every call.
    """

    weight: torch.Tensor | None

    def __init__(
        self,
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
    ) -> None:
        super().__init__()
        check_choice("reduction", reduction, REDUCTIONS)
        check_choice("convention", convention, CONVENTIONS)
        check_choice("weight_mode", weight_mode, WEIGHT_MODES)
        F._options(2, ignore_index=ignore_index, reduction=reduction,
                   label_smoothing=label_smoothing, convention=convention,
                   weight_mode=weight_mode, z_loss=z_loss)
        check_int("dim", dim)
        _dispatch.check_backend_name(backend)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.convention = convention
        self.weight_mode = weight_mode
        self.dim = dim
        self.z_loss = z_loss
        self.inplace_backward = inplace_backward
        self.backend = backend

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            input, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction,
            label_smoothing=self.label_smoothing, convention=self.convention,
            weight_mode=self.weight_mode, dim=self.dim, z_loss=self.z_loss,
            inplace_backward=self.inplace_backward, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"label_smoothing={self.label_smoothing}, convention={self.convention!r}, "
                f"weight_mode={self.weight_mode!r}, reduction={self.reduction!r}, "
                f"ignore_index={self.ignore_index}, dim={self.dim}, z_loss={self.z_loss}")
