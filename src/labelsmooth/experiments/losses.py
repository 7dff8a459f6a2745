"""The training losses ``labelsmooth compare`` knows, by name.

``LOSSES`` maps a name to a factory ``factory(smoothing, num_classes, **params) -> loss`` (``params``:
the variant parameters given on the command line, see ``VARIANT_OPTIONS``; most factories take none).
A loss is a callable ``loss(logits, target) -> scalar tensor`` (mean over the batch). It may also define

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

LossFactory = Callable[..., Callable[..., torch.Tensor]]

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


class VariantLoss:
    """Adapter from a :data:`labelsmooth.variants.VARIANTS` module to the training loop's hooks.

    ``on_train_begin(targets)`` builds a fresh module (so the dummy call of :func:`make_loss` leaves
    no online-smoothing statistics behind) on the labels' device; for ``prior`` the prior is
    ``class_frequencies`` of exactly the labels trained on (the noisy ones under ``--noise``).
    Before that, ``prior`` uses a uniform prior (only the dummy check call sees it).
    """

    def __init__(self, name: str, smoothing: float, num_classes: int, **params: Any) -> None:
        self.name = name
        self.smoothing = float(smoothing)
        self.num_classes = num_classes
        self.params = params
        self.module = self._build(None)

    def _build(self, targets: torch.Tensor | None) -> torch.nn.Module:
        from .. import variants

        params = dict(self.params)
        if self.name == "prior":
            params["prior"] = (torch.full((self.num_classes,), 1.0 / self.num_classes,
                                          dtype=torch.float64) if targets is None else
                               variants.class_frequencies(targets.cpu(), self.num_classes))
        module = variants.VARIANTS[self.name](self.num_classes, self.smoothing, **params)
        return module.train()

    def on_train_begin(self, targets: torch.Tensor) -> None:
        self.module = self._build(targets).to(targets.device)

    def on_epoch_end(self) -> None:
        self.module.on_epoch_end()

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.module(logits, target)

    def __repr__(self) -> str:
        return f"VariantLoss({self.module!r})"


VARIANT_OPTIONS: dict[str, tuple[str, str, str]] = {
    # command-line dest -> (variant name, its keyword parameter, meaning)
    "online_alpha": ("online", "alpha", "weight of the hard target in [0, 1]"),
    "beta": ("confidence_penalty", "beta", "entropy-penalty weight >= 0"),
    "gamma": ("focal", "gamma", "focusing exponent >= 0"),
    "poly_epsilon": ("poly", "epsilon1", "Poly-1 coefficient (any finite float)"),
}
"""The variant parameters ``compare`` exposes as options (``--online-alpha`` etc.); their defaults
are read from :mod:`labelsmooth.variants` by :func:`variant_default`. label_relaxation's alpha is the
``--smoothing`` value and prior's prior the training-label frequencies, so neither has an option."""


def variant_default(variant: str, param: str) -> Any:
    """The default of ``param`` in the variant module's constructor (e.g. focal's gamma = 2.0)."""
    import inspect

    from .. import variants

    cls = {"online": variants.OnlineLabelSmoothing, "confidence_penalty":
           variants.ConfidencePenaltyLoss, "focal": variants.FocalLoss,
           "poly": variants.PolyLoss}[variant]
    return inspect.signature(cls).parameters[param].default


_VARIANT_DESCRIPTIONS = {
    "online": "online label smoothing (Zhang et al. 2021); --smoothing = first-epoch eps",
    "confidence_penalty": "CE(smoothed) - beta*H(p) (Pereyra et al. 2017)",
    "label_relaxation": "label relaxation (Lienen & Hüllermeier 2021); alpha = --smoothing",
    "focal": "focal loss on the smoothed target (Lin et al. 2017)",
    "poly": "Poly-1: CE(smoothed) + eps1*(1 - p_t) (Leng et al. 2022)",
    "prior": "smoothing toward the training-label frequencies",
}


def _register_variants() -> None:
    for name, text in _VARIANT_DESCRIPTIONS.items():
        register_loss(name, lambda eps, k, _name=name, **params: VariantLoss(_name, eps, k, **params),
                      description=text)


_register_variants()


def run_name(loss: str, smoothing: float) -> str:
    """``ce`` for smoothing-free losses, else ``ls(0.1)``."""
    return loss if loss in SMOOTHING_FREE else f"{loss}({smoothing:g})"


def make_loss(name: str, smoothing: float, num_classes: int, **params: Any) -> Any:
    """Build the loss and call it once on a dummy batch so a bad smoothing or parameter fails before
    training (``params`` go to the factory: a variant's keyword parameters)."""
    if name not in LOSSES:
        raise ValueError(f"--losses: {name!r} is not known; allowed: {', '.join(LOSSES)}")
    try:
        loss = LOSSES[name](smoothing, num_classes, **params)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"--losses {name} with --smoothing {smoothing:g}: {exc}") from None
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
