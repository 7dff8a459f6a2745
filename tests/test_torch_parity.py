"""Parity with torch.nn.functional.cross_entropy wherever torch defines the same thing."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls
from conftest import loss_and_grad

CASES = list(itertools.product(
    ["uniform", "non_target"],       # non_target maps to torch's eps * K / (K - 1)
    [None, "weight"],
    [-100, 2],                        # ignore_index (2 is also a real class id here)
    ["mean", "sum", "none"],
    ["index", "soft"],
    [(6, 5), (3, 5, 2, 3), (5,)],    # (N, C), (N, C, d1, d2), unbatched (C,)
))
# torch (and labelsmooth) reject ignore_index with probability targets: see test_errors_and_numerics
CASES = [case for case in CASES if not (case[2] != -100 and case[4] == "soft")]


@pytest.mark.parametrize(("convention", "weighted", "ignore_index", "reduction", "kind", "shape"),
                         CASES)
def test_matches_torch(backend, convention, weighted, ignore_index, reduction, kind, shape):
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    k = shape[0] if len(shape) == 1 else shape[1]
    if kind == "index":
        target = torch.randint(0, k, shape[:1] + shape[2:] if len(shape) > 1 else (),
                               generator=g)
    else:
        target = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64),
                               dim=0 if len(shape) == 1 else 1)
    weight = torch.rand(k, generator=g, dtype=torch.float64) + 0.1 if weighted else None
    eps = 0.2
    torch_eps = eps * k / (k - 1) if convention == "non_target" else eps
    ours, grad = loss_and_grad(ls.cross_entropy, logits, target, weight, label_smoothing=eps,
                               convention=convention, ignore_index=ignore_index,
                               reduction=reduction, backend=backend)
    theirs, their_grad = loss_and_grad(F.cross_entropy, logits, target, weight,
                                       label_smoothing=torch_eps, ignore_index=ignore_index,
                                       reduction=reduction)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, their_grad, rtol=1e-10, atol=1e-12)


def test_module_is_a_drop_in_for_cross_entropy_loss(backend):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, 3, generator=g)
    y = torch.randint(0, 4, (8, 3), generator=g)
    w = torch.tensor([1.0, 2.0, 0.5, 1.0])
    ours = ls.LabelSmoothingCrossEntropy(w, label_smoothing=0.1, backend=backend)(x, y)
    theirs = torch.nn.CrossEntropyLoss(w, label_smoothing=0.1)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_return_float32_loss_and_input_dtype_grad(backend, dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(16, 10, generator=g) * 4).to(dtype)
    y = torch.randint(0, 10, (16,), generator=g)
    loss, grad = loss_and_grad(ls.cross_entropy, x, y, label_smoothing=0.1, backend=backend)
    want, want_grad = loss_and_grad(F.cross_entropy, x.float(), y, label_smoothing=0.1)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.float(), want_grad, rtol=1e-2, atol=1e-3)
