"""The training losses ``labelsmooth compare`` knows, by name.

``LOSSES`` maps a name to a factory ``factory(smoothing, num_classes) -> loss``. A loss is a callable
``loss(logits, target) -> scalar tensor`` (mean over the batch). It may also define

* ``on_train_begin(targets) -> None``: called once with the training labels ``(N,)`` (on the training
  device) before the first epoch (data-dependent state, e.g. a class prior);
* ``on_epoch_end() -> None``: called by the training loop after every epoch (per-epoch state, e.g.
  online label smoothing's class-wise soft targets);
* ``needs_index = True``: then it is called as ``loss(logits, target, index=index)`` with the rows'
  positions in the training set (per-sample state, e.g. distillation targets).

Names in ``SMOOTHING_FREE`` ignore the smoothing value, so a ``--smoothing`` sweep runs them once.
Add a loss with :func:`register_loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..functional import cross_entropy

LossFactory = Callable[[float, int], Callable[..., torch.Tensor]]

LOSSES: dict[str, LossFactory] = {}
SMOOTHING_FREE: set[str] = set()
DESCRIPTIONS: dict[str, str] = {}


def register_loss(name: str, factory: LossFactory, *, uses_smoothing: bool = True,
                  description: str = "") -> None:
    """Make ``name`` available to ``--losses``."""
    LOSSES[name] = factory
    DESCRIPTIONS[name] = description
    if uses_smoothing:
        SMOOTHING_FREE.discard(name)
    else:
        SMOOTHING_FREE.add(name)


class SmoothedCE:
    """``labelsmooth.cross_entropy`` with a fixed smoothing and convention."""

    def __init__(self, smoothing: float, convention: str = "uniform") -> None:
        self.smoothing = float(smoothing)
        self.convention = convention

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target, label_smoothing=self.smoothing,
                             convention=self.convention)

    def __repr__(self) -> str:
        return f"SmoothedCE(smoothing={self.smoothing}, convention={self.convention!r})"


register_loss("ce", lambda eps, k: SmoothedCE(0.0), uses_smoothing=False,
              description="plain cross-entropy (smoothing 0)")
register_loss("ls", lambda eps, k: SmoothedCE(eps, "uniform"),
              description="label smoothing, uniform: q = (1-eps)[c=y] + eps/K")
register_loss("ls-nt", lambda eps, k: SmoothedCE(eps, "non_target"),
              description="label smoothing, non_target: q = (1-eps)[c=y] + eps/(K-1)[c!=y]")


def run_name(loss: str, smoothing: float) -> str:
    """``ce`` for smoothing-free losses, else ``ls(0.1)``."""
    return loss if loss in SMOOTHING_FREE else f"{loss}({smoothing:g})"


def make_loss(name: str, smoothing: float, num_classes: int) -> Any:
    """Build the loss and call it once on a dummy batch so a bad smoothing fails before training."""
    if name not in LOSSES:
        raise ValueError(f"--losses: {name!r} is not known; allowed: {', '.join(LOSSES)}")
    loss = LOSSES[name](smoothing, num_classes)
    logits = torch.zeros(2, num_classes)
    target = torch.zeros(2, dtype=torch.long)
    kwargs = {"index": torch.arange(2)} if getattr(loss, "needs_index", False) else {}
    try:
        value = loss(logits, target, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"--losses {name} with --smoothing {smoothing:g}: {exc}") from None
    if not torch.isfinite(value).all():
        raise ValueError(f"--losses {name} with --smoothing {smoothing:g} gives a non-finite loss")
    return loss
