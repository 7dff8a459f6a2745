"""Properties that hold for every input (hypothesis), on every CPU backend; fp64 gradcheck."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import labelsmooth as ls
from conftest import CPU_BACKENDS, loss_and_grad

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def problems(draw, min_classes: int = 1):
    n = draw(st.integers(1, 6))
    k = draw(st.integers(min_classes, 7))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 10.0, 100.0]))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * scale
    target = torch.randint(0, k, (n,), generator=g)
    ignored = torch.rand(n, generator=g) < 0.3
    target[ignored] = -100
    eps = draw(st.floats(0.0, 1.0))
    return logits, target, eps


backends = st.sampled_from(CPU_BACKENDS)
weighting = st.sampled_from(["none", "class", "sample"])


def weight_for(kind: str, k: int, seed: int = 0):
    if kind == "none":
        return None, "class"
    g = torch.Generator().manual_seed(seed)
    return torch.rand(k, generator=g, dtype=torch.float64) + 0.1, kind


@SETTINGS
@given(problems(), backends, st.floats(-50, 50), weighting)
def test_shift_invariance_per_row(problem, backend, shift, kind):
    logits, target, eps = problem
    w, mode = weight_for(kind, logits.shape[1])
    shifts = torch.linspace(-1, 1, logits.shape[0], dtype=torch.float64)[:, None] * shift
    a, ga = loss_and_grad(ls.cross_entropy, logits, target, w, label_smoothing=eps,
                          weight_mode=mode, reduction="none", backend=backend)
    b, gb = loss_and_grad(ls.cross_entropy, logits + shifts, target, w, label_smoothing=eps,
                          weight_mode=mode, reduction="none", backend=backend)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-12)


@SETTINGS
@given(problems(), backends)
def test_gradient_rows_sum_to_zero_and_ignored_rows_are_zero(problem, backend):
    logits, target, eps = problem
    _, grad = loss_and_grad(ls.cross_entropy, logits, target, label_smoothing=eps,
                            backend=backend)
    torch.testing.assert_close(grad.sum(1), torch.zeros(len(grad), dtype=torch.float64),
                               rtol=0, atol=1e-12)
    assert grad[target == -100].eq(0).all()


@SETTINGS
@given(problems(), backends)
def test_loss_is_at_least_the_entropy_of_the_smoothed_target(problem, backend):
    logits, target, eps = problem
    loss = ls.cross_entropy(logits, target, label_smoothing=eps, reduction="none",
                            backend=backend)
    kept = target != -100
    q = ls.smooth_targets(target[kept], logits.shape[1], eps, dtype=torch.float64)
    entropy = -(torch.where(q > 0, q * q.log(), torch.zeros_like(q))).sum(1)
    assert (loss[kept] >= entropy - 1e-9).all()


@SETTINGS
@given(problems(min_classes=2), backends, weighting, st.sampled_from(["mean", "sum", "none"]))
def test_non_target_equals_uniform_with_rescaled_eps(problem, backend, kind, reduction):
    logits, target, eps = problem
    k = logits.shape[1]
    w, mode = weight_for(kind, k)
    eps = min(eps, (k - 1) / k)  # so that eps * K / (K - 1) stays a valid uniform smoothing
    a, ga = loss_and_grad(ls.cross_entropy, logits, target, w, label_smoothing=eps,
                          convention="non_target", weight_mode=mode, reduction=reduction,
                          backend=backend)
    b, gb = loss_and_grad(ls.cross_entropy, logits, target, w,
                          label_smoothing=min(1.0, eps * k / (k - 1)), weight_mode=mode,
                          reduction=reduction, backend=backend)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-12)


@SETTINGS
@given(problems(), backends, st.sampled_from(["mean", "sum", "none"]))
def test_zero_smoothing_is_plain_cross_entropy(problem, backend, reduction):
    logits, target, _ = problem
    a, ga = loss_and_grad(ls.cross_entropy, logits, target, reduction=reduction, backend=backend)
    b, gb = loss_and_grad(torch.nn.functional.cross_entropy, logits, target, reduction=reduction)
    if reduction == "mean" and bool((target == -100).all()):
        assert a.item() == 0.0 and ga.eq(0).all()  # documented: torch gives NaN here
        return
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-12)


@SETTINGS
@given(problems(), backends, weighting, st.floats(0, 0.1))
def test_module_equals_functional(problem, backend, kind, z_loss):
    logits, target, eps = problem
    w, mode = weight_for(kind, logits.shape[1])
    module = ls.LabelSmoothingCrossEntropy(w, label_smoothing=eps, weight_mode=mode,
                                           z_loss=z_loss, backend=backend)
    torch.testing.assert_close(
        module(logits, target),
        ls.cross_entropy(logits, target, w, label_smoothing=eps, weight_mode=mode, z_loss=z_loss,
                         backend=backend), rtol=0, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", ["none", "class", "sample"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_fp64(backend, kind, reduction):
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, -100, 3, 1, 2])
    w, mode = weight_for(kind, 4)

    def fn(x):
        return ls.cross_entropy(x, target, w, label_smoothing=0.2, convention="non_target",
                                weight_mode=mode, z_loss=0.01, reduction=reduction,
                                backend=backend)

    assert torch.autograd.gradcheck(fn, (logits,))
    if backend == "reference":  # plain autograd: second derivatives too
        assert torch.autograd.gradgradcheck(fn, (logits,))


def test_module_state_and_repr():
    w = torch.tensor([1.0, 2.0, 3.0])
    module = ls.LabelSmoothingCrossEntropy(w, label_smoothing=0.1, convention="non_target")
    assert torch.equal(module.state_dict()["weight"], w)
    assert "convention='non_target'" in repr(module)
    module = module.double()
    assert module.weight.dtype == torch.float64
    with pytest.raises(ValueError, match=r"label_smoothing=2\.0"):
        ls.LabelSmoothingCrossEntropy(label_smoothing=2.0)
    with pytest.raises(ValueError, match="reduction='bad'"):
        ls.LabelSmoothingCrossEntropy(reduction="bad")
