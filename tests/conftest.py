from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch
from hypothesis import settings

# Reproducible property tests: the same examples on every run (CI included).
settings.register_profile("labelsmooth", derandomize=True, print_blob=True)
settings.load_profile("labelsmooth")

sys.path.insert(0, os.path.dirname(__file__))  # tests/oracle.py


def cpu_backends() -> list[str]:
    """Backends that run on this machine's CPU (the fused one once it exists)."""
    names = ["reference"]
    if importlib.util.find_spec("labelsmooth.backends.cpu") is not None:
        names.append("cpu")
    return names


CPU_BACKENDS = cpu_backends()


@pytest.fixture(params=CPU_BACKENDS)
def backend(request) -> str:
    return request.param


def loss_and_grad(fn, logits: torch.Tensor, *args, **kwargs):
    """Call ``fn(leaf, *args, **kwargs)``; return (loss, grad of loss.sum() w.r.t. the logits)."""
    x = logits.detach().clone().requires_grad_(True)
    loss = fn(x, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad
