"""The frozen options object every backend receives, and the argument checks that build it."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

CONVENTIONS = ("uniform", "non_target")
WEIGHT_MODES = ("class", "sample")
REDUCTIONS = ("mean", "sum", "none")


@dataclass(frozen=True)
class LossOptions:
    """Everything a backend needs besides the tensors.

    ``smoothing`` is the *effective uniform* epsilon: the ``non_target`` convention has already been
    mapped to ``uniform`` with ``eps * K / (K - 1)``, so every backend implements one formula,
    ``q_c = (1 - smoothing) [c = y] + smoothing / K``.
    """

    smoothing: float
    ignore_index: int
    reduction: str
    weight_mode: str
    z_loss: float
    inplace_backward: bool = False


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed: {', '.join(allowed)}")
    return value


def check_unit_interval(name: str, value: object) -> float:
    """A float in [0, 1]; NaN, negatives, values above 1 and non-numbers raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy scalars are Real
        raise TypeError(f"{name} must be a float in [0, 1], got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} is out of range; allowed: a float in [0, 1]")
    return value


def check_nonnegative(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a non-negative float, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"{name}={value!r} is out of range; allowed: a finite float >= 0")
    return value


def effective_smoothing(label_smoothing: float, convention: str, num_classes: int) -> float:
    """Map ``(eps, convention)`` to the uniform epsilon with the same target distribution."""
    if convention == "uniform" or label_smoothing == 0.0:
        return label_smoothing
    if num_classes < 2:
        raise ValueError(
            f"convention='non_target' with label_smoothing={label_smoothing} needs at least 2 "
            f"classes, got {num_classes}: eps/(K-1) is undefined for K=1"
        )
    return label_smoothing * num_classes / (num_classes - 1)


def check_float_input(name: str, tensor: object) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(
            f"{name} has dtype {tensor.dtype}; allowed: float16, bfloat16, float32, float64 logits"
        )
    return tensor


def check_weight(
    weight: torch.Tensor | None, num_classes: int, like: torch.Tensor, name: str = "weight"
) -> torch.Tensor | None:
    """A 1-D float tensor of length C on the input's device, or None."""
    if weight is None:
        return None
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"{name} has dtype {weight.dtype}; allowed: a floating-point tensor")
    if weight.dim() != 1 or weight.numel() != num_classes:
        raise ValueError(
            f"{name} has shape {tuple(weight.shape)}; allowed: ({num_classes},), one entry per class"
        )
    check_same_device(name, weight, like)
    return weight


def check_int(name: str, value: object) -> int:
    """A Python or numpy integer (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def check_same_device(name: str, tensor: torch.Tensor, like: torch.Tensor) -> None:
    if tensor.device != like.device:
        raise ValueError(f"{name} is on {tensor.device} but input is on {like.device}; "
                         f"allowed: the input's device")


def class_dim(dim: object, ndim: int) -> int:
    """Normalise the class dimension; ``ndim`` is the input's number of dimensions."""
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"dim must be an int, got {type(dim).__name__} {dim!r}")
    if ndim == 0:
        raise ValueError("input must have at least 1 dimension (the classes), got a 0-d tensor")
    dim = int(dim)
    if ndim == 1 and dim == 1:  # torch: the default dim=1 means the only dim of an unbatched (C,)
        return 0
    if not -ndim <= dim < ndim:
        raise ValueError(f"dim={dim} is out of range for an input with {ndim} dimensions; "
                         f"allowed: {-ndim} .. {ndim - 1}")
    return dim % ndim
