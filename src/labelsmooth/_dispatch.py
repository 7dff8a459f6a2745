"""Backend choice: the ``backend=`` argument > :func:`use_backend` context > ``LABELSMOOTH_BACKEND`` >
``auto``.

A backend is a module with

* ``cross_entropy(logits, target, weight, opts) -> Tensor`` on ``(N, K)`` logits, ``(N,)`` class ids or
  ``(N, K)`` probabilities, returning the reduced loss (``(N,)`` for ``reduction="none"``), and
* optionally ``unsupported(logits, target, weight, opts) -> str | None``, the reason it cannot compute
  this call; :func:`resolve` then falls back to ``reference`` (the documented fallback list lives in the
  README).

Backends are imported only when first chosen, so ``import labelsmooth`` never imports Triton.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import os
from collections.abc import Iterator
from types import ModuleType

import torch

BACKENDS: dict[str, str] = {
    "reference": "labelsmooth.backends.reference",
    "cpu": "labelsmooth.backends.cpu",
    "triton": "labelsmooth.backends.triton",
}
ENV_VAR = "LABELSMOOTH_BACKEND"

_context: contextvars.ContextVar[str | None] = contextvars.ContextVar("labelsmooth_backend", default=None)


def check_backend_name(name: object, source: str = "backend") -> str:
    allowed = ("auto", *BACKENDS)
    if not isinstance(name, str) or name not in allowed:
        raise ValueError(f"{source}={name!r} is not a known backend; allowed: {', '.join(allowed)}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Within the block, calls with ``backend="auto"`` use ``name``."""
    token = _context.set(check_backend_name(name))
    try:
        yield
    finally:
        _context.reset(token)


def load(name: str) -> ModuleType:
    return importlib.import_module(BACKENDS[name])


def _auto(device: torch.device) -> str:
    if device.type == "cuda":
        return "triton" if importlib.util.find_spec("triton") is not None else "reference"
    if device.type == "cpu":
        return "cpu"
    return "reference"


def requested(backend: str) -> str:
    """The backend name asked for by argument, context or environment (may be ``auto``)."""
    check_backend_name(backend)
    if backend != "auto":
        return backend
    if _context.get() is not None:
        return _context.get()  # type: ignore[return-value]
    env = os.environ.get(ENV_VAR)
    if env:
        return check_backend_name(env, source=ENV_VAR)
    return "auto"


def resolve(backend: str, logits: torch.Tensor, target: torch.Tensor,
            weight: torch.Tensor | None, opts: object) -> ModuleType:
    """The backend module that will compute this call (falls back to ``reference``)."""
    name = requested(backend)
    if name == "auto":
        name = _auto(logits.device)
    module = load(name)
    unsupported = getattr(module, "unsupported", None)
    if unsupported is not None and unsupported(logits, target, weight, opts) is not None:
        return load("reference")
    return module
