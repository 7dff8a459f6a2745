"""labelsmooth: exact, fast and lean label-smoothed cross-entropy for PyTorch.

``import labelsmooth`` imports only torch: backends, Triton kernels, the distributed helpers and the
``compare`` tooling are imported when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._dispatch import use_backend
from .functional import binary_cross_entropy_with_logits, cross_entropy, smooth_targets
from .linear import linear_cross_entropy
from .modules import LabelSmoothingCrossEntropy

__version__ = "0.1.0"

__all__ = [
    "LabelSmoothingCrossEntropy",
    "__version__",
    "binary_cross_entropy_with_logits",
    "compat",
    "cross_entropy",
    "distributed",
    "linear_cross_entropy",
    "smooth_targets",
    "use_backend",
    "variants",
]

_LAZY_MODULES = ("compat", "distributed", "variants")


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
