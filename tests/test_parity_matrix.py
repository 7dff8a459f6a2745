"""Every CPU backend against the independent float64 oracle and against the reference backend:
backend x dtype x reduction x convention x weights x ignore_index (x z_loss, x layout)."""

from __future__ import annotations

import itertools
import zlib

import pytest
import torch

import labelsmooth as ls
from conftest import loss_and_grad
from oracle import oracle_value_and_grad

# One table of tolerances per input dtype (loss and gradient, against the float64 oracle).
TOLERANCE = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-12},
    torch.float32: {"rtol": 2e-5, "atol": 2e-6},
    torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2},
    torch.float16: {"rtol": 4e-3, "atol": 4e-3},
}
# Half-precision logits are rounded before the loss sees them: compare against the oracle on the
# *rounded* logits, so the tolerance covers only the loss's own arithmetic and the gradient rounding.

WEIGHTS = ("none", "class", "sample")


def make_case(seed: int, n: int = 7, k: int = 5, ignore: bool = True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, k, (n,), generator=g)
    if ignore:
        target[1] = -100
        target[4] = -100
    weight = torch.rand(k, generator=g, dtype=torch.float64) + 0.25
    return logits, target, weight


MATRIX = list(itertools.product(
    [torch.float64, torch.float32, torch.bfloat16, torch.float16],
    ["mean", "sum", "none"],
    ["uniform", "non_target"],
    WEIGHTS,
    [True, False],
))


@pytest.mark.parametrize(("dtype", "reduction", "convention", "weights", "ignore"), MATRIX)
def test_backend_matches_oracle(backend, dtype, reduction, convention, weights, ignore):
    seed = zlib.crc32(repr((reduction, convention, weights, ignore)).encode()) % 1000
    logits, target, weight = make_case(seed, ignore=ignore)
    logits = logits.to(dtype)
    w = None if weights == "none" else weight.to(dtype if dtype == torch.float64 else torch.float32)
    mode = "sample" if weights == "sample" else "class"
    kw = dict(reduction=reduction, convention=convention, weight_mode=mode)
    loss, grad = loss_and_grad(ls.cross_entropy, logits, target, w, label_smoothing=0.15,
                               backend=backend, **kw)
    want, want_grad = oracle_value_and_grad(logits, target, None if w is None else w.double(),
                                            eps=0.15, **kw)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert grad.dtype == dtype
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(loss.double(), want, **tol)
    torch.testing.assert_close(grad.double(), want_grad, **tol)
    if ignore:
        assert grad[1].eq(0).all() and grad[4].eq(0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("weights", WEIGHTS)
def test_backend_matches_reference_with_z_loss(backend, dtype, weights):
    logits, target, weight = make_case(3, n=9, k=6)
    logits = logits.to(dtype)
    w = None if weights == "none" else weight.to(torch.float64 if dtype == torch.float64
                                                 else torch.float32)
    kw = dict(label_smoothing=0.1, z_loss=1e-3, weight_mode="sample" if weights == "sample"
              else "class")
    loss, grad = loss_and_grad(ls.cross_entropy, logits, target, w, backend=backend, **kw)
    ref, ref_grad = loss_and_grad(ls.cross_entropy, logits, target, w, backend="reference", **kw)
    want, want_grad = oracle_value_and_grad(logits, target, None if w is None else w.double(),
                                            eps=0.1, z_loss=1e-3, weight_mode=kw["weight_mode"])
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(loss.double(), want, **tol)
    torch.testing.assert_close(grad.double(), want_grad, **tol)
    torch.testing.assert_close(loss, ref, **tol)
    torch.testing.assert_close(grad, ref_grad, **tol)


@pytest.mark.parametrize(("shape", "dim"), [((2, 5, 3, 4), 1), ((3, 4, 6), -1), ((5,), 0),
                                             ((2, 3, 5), 2)])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_layouts(backend, shape, dim, reduction):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(shape, generator=g, dtype=torch.float64)
    k = shape[dim]
    tshape = list(shape)
    del tshape[dim]
    target = torch.randint(0, k, tshape, generator=g)
    if target.dim():
        target.view(-1)[0] = -100
    loss, grad = loss_and_grad(ls.cross_entropy, logits, target, label_smoothing=0.2, dim=dim,
                               reduction=reduction, backend=backend)
    want, want_grad = oracle_value_and_grad(logits, target, eps=0.2, dim=dim, reduction=reduction)
    assert loss.shape == want.shape == (tuple(tshape) if reduction == "none" else ())
    torch.testing.assert_close(loss, want, **TOLERANCE[torch.float64])
    torch.testing.assert_close(grad, want_grad, **TOLERANCE[torch.float64])


@pytest.mark.parametrize("convention", ["uniform", "non_target"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_probability_targets(backend, convention, weighted, reduction):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64)
    target = torch.softmax(torch.randn(6, 4, generator=g, dtype=torch.float64), -1)
    w = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64) if weighted else None
    loss, grad = loss_and_grad(ls.cross_entropy, logits, target, w, label_smoothing=0.3,
                               convention=convention, reduction=reduction, backend=backend)
    want, want_grad = oracle_value_and_grad(logits, target, w, eps=0.3, convention=convention,
                                            reduction=reduction)
    torch.testing.assert_close(loss, want, **TOLERANCE[torch.float64])
    torch.testing.assert_close(grad, want_grad, **TOLERANCE[torch.float64])
