"""The shared public cases (shared/cases/public-cases.json), numbers written in, on every CPU backend.

Each test fixes the whole kind of mistake its case documents, and asserts the documented "faulty"
numbers are *not* what we compute.
"""

from __future__ import annotations

import math

import pytest
import torch

import labelsmooth as ls
from conftest import loss_and_grad

TOL = {"rtol": 1e-6, "atol": 1e-7}
F64 = torch.float64


def t(values, dtype=F64):
    return torch.tensor(values, dtype=dtype)


def close(actual, expected):
    torch.testing.assert_close(actual, t(expected, actual.dtype), **TOL)


# LS-01 / LS-16: class weights x smoothing -------------------------------------------------------
LS01_LOGITS = [[1.0, 2.0, 0.5], [0.2, -0.3, 1.5]]
LS01_W = [0.2, 1.0, 3.0]


def test_ls01_class_weights_torch_parity(backend):
    loss, grad = loss_and_grad(ls.cross_entropy, t(LS01_LOGITS), torch.tensor([1, 0]), t(LS01_W),
                               label_smoothing=0.1, backend=backend)
    close(loss, 0.882066859)
    close(grad, [[0.1948384891, -0.2330502878, 0.0382117987],
                 [-0.1050105604, 0.0028793115, 0.1021312489]])
    assert not math.isclose(loss.item(), 0.5946112018, rel_tol=1e-3)  # article A (mean over N)
    assert not math.isclose(loss.item(), 0.7324554619, rel_tol=1e-3)  # article C


def test_ls01_sample_weights(backend):
    loss, grad = loss_and_grad(ls.cross_entropy, t(LS01_LOGITS), torch.tensor([1, 0]), t(LS01_W),
                               label_smoothing=0.1, weight_mode="sample", backend=backend)
    close(loss, 0.7291632378)
    close(grad, [[0.1649088036, -0.2540013451, 0.0890925415],
                 [-0.1239649336, 0.0136051252, 0.1103598084]])


@pytest.mark.parametrize(("reduction", "expected"), [
    ("sum", 1.0584802308), ("none", [0.6396102021, 0.4188700287])])
def test_ls01_reductions(backend, reduction, expected):
    loss = ls.cross_entropy(t(LS01_LOGITS), torch.tensor([1, 0]), t(LS01_W), label_smoothing=0.1,
                            reduction=reduction, backend=backend)
    close(loss, expected)


@pytest.mark.parametrize(("weight_mode", "expected"), [("class", [[0.38, -0.38]]),
                                                       ("sample", [[0.0, 0.0]])])
def test_ls01_optimum_property(backend, weight_mode, expected):
    """At logits = log(q), sample weighting has zero gradient; class weighting pushes to class 1."""
    _, grad = loss_and_grad(ls.cross_entropy, t([[-0.0512932944, -2.9957322736]]),
                            torch.tensor([0]), t([1.0, 9.0]), label_smoothing=0.1,
                            weight_mode=weight_mode, backend=backend)
    torch.testing.assert_close(grad, t(expected), rtol=1e-6, atol=1e-8)


def test_ls16_non_target_with_class_weights_and_unweighted(backend):
    weighted = ls.cross_entropy(t(LS01_LOGITS), torch.tensor([1, 0]), t(LS01_W),
                                label_smoothing=0.1, convention="non_target", backend=backend)
    close(weighted, 0.9910186696)
    plain = ls.cross_entropy(t(LS01_LOGITS), torch.tensor([1, 0]), label_smoothing=0.1,
                             convention="non_target", backend=backend)
    close(plain, 1.1062521452)


# LS-02: ignore_index removes both parts of ignored rows ---------------------------------------
LS02_LOGITS = [[1.0, 0.0, -1.0, 2.0], [0.5, 0.5, 0.5, 0.5], [3.0, -2.0, 0.0, 1.0]]
LS02_TARGET = [3, -100, 0]


@pytest.mark.parametrize(("reduction", "expected", "expected_grad"), [
    ("mean", 0.7078525306, [[0.093441409, 0.0185721594, -0.0089706984, -0.1030428701],
                            [0.0, 0.0, 0.0, 0.0],
                            [-0.0054877463, -0.0221733487, -0.0041137147, 0.0317748097]]),
    ("sum", 1.4157050612, [[0.1868828181, 0.0371443187, -0.0179413967, -0.2060857401],
                           [0.0, 0.0, 0.0, 0.0],
                           [-0.0109754925, -0.0443466973, -0.0082274295, 0.0635496194]]),
])
def test_ls02_ignore_index(backend, reduction, expected, expected_grad):
    loss, grad = loss_and_grad(ls.cross_entropy, t(LS02_LOGITS), torch.tensor(LS02_TARGET),
                               label_smoothing=0.2, reduction=reduction, backend=backend)
    close(loss, expected)
    close(grad, expected_grad)
    assert grad[1].eq(0).all()
    for faulty in (0.8464819667, 1.6929639334, 0.6464153193):
        assert not math.isclose(loss.item(), faulty, rel_tol=1e-4)


def test_ls02_none_has_exact_zero(backend):
    loss = ls.cross_entropy(t(LS02_LOGITS), torch.tensor(LS02_TARGET), label_smoothing=0.2,
                            reduction="none", backend=backend)
    close(loss, [0.7401896986, 0.0, 0.6755153626])
    assert loss[1].item() == 0.0


# LS-04: eps/K vs eps/(K-1) ----------------------------------------------------------------------
def test_ls04_conventions(backend):
    x, y = t([[2.0, 0.0, -1.0]]), torch.tensor([0])
    loss, grad = loss_and_grad(ls.cross_entropy, x, y, label_smoothing=0.3, backend=backend)
    close(loss, 0.6698460196)
    close(grad, [[0.0437947345, 0.0141951994, -0.0579899339]])
    loss, grad = loss_and_grad(ls.cross_entropy, x, y, label_smoothing=0.3,
                               convention="non_target", backend=backend)
    close(loss, 0.9198460196)
    close(grad, [[0.1437947345, -0.0358048006, -0.1079899339]])


@pytest.mark.parametrize(("logits", "eps", "convention", "expected"), [
    ([[-0.0512932944, -2.9957322736]], 0.1, "uniform", 0.1985152433),
    ([[-0.1053605157, -2.302585093]], 0.1, "non_target", 0.3250829734),
    ([[-0.1053605157, -2.302585093]], 0.2, "uniform", 0.3250829734),
])
def test_ls04_optimum_is_the_convention_target(backend, logits, eps, convention, expected):
    loss, grad = loss_and_grad(ls.cross_entropy, t(logits), torch.tensor([0]),
                               label_smoothing=eps, convention=convention, backend=backend)
    close(loss, expected)  # = entropy of q: the loss is at its minimum
    torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-9)


# LS-05: smoothing validation --------------------------------------------------------------------
@pytest.mark.parametrize("eps", [-0.5, 1.5, float("nan")])
def test_ls05_bad_smoothing_raises(backend, eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        ls.cross_entropy(t([[1.5, -0.5, 0.2]]), torch.tensor([2]), label_smoothing=eps,
                         backend=backend)


def test_ls05_zero_smoothing_value(backend):
    close(ls.cross_entropy(t([[1.5, -0.5, 0.2]]), torch.tensor([2]), label_smoothing=0.0,
                           backend=backend), 1.6420758472)


# LS-09: probability targets ---------------------------------------------------------------------
LS09_LOGITS = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]
LS09_TARGET = [[0.7, 0.3, 0.0], [0.0, 0.5, 0.5]]


def test_ls09_probability_targets(backend):
    loss, grad = loss_and_grad(ls.cross_entropy, t(LS09_LOGITS), t(LS09_TARGET),
                               label_smoothing=0.1, backend=backend)
    close(loss, 1.0503141717)
    close(grad, [[0.0009538112, -0.0293024311, 0.0283486199],
                 [0.0654591471, 0.1263956955, -0.1918548426]])
    assert not math.isclose(loss.item(), 1.0069808383, rel_tol=1e-4)  # smoothing dropped
    close(ls.cross_entropy(t(LS09_LOGITS), t(LS09_TARGET), label_smoothing=0.1, reduction="none",
                           backend=backend), [0.7776059644, 1.3230223789])
    close(ls.cross_entropy(t(LS09_LOGITS), t(LS09_TARGET), t([1.0, 2.0, 0.5]),
                           label_smoothing=0.1, backend=backend), 1.0390890085)


# LS-10: segmentation layout ---------------------------------------------------------------------
LS10_LOGITS = [[[[2.0, 0.0], [1.0, -1.0]], [[0.5, 1.5], [0.0, 0.0]], [[-1.0, 0.5], [2.0, 1.0]]]]
LS10_TARGET = [[[0, 1], [2, 255]]]


def test_ls10_nchw_with_void_pixels(backend):
    loss, grad = loss_and_grad(ls.cross_entropy, t(LS10_LOGITS), torch.tensor(LS10_TARGET),
                               label_smoothing=0.1, ignore_index=255, backend=backend)
    close(loss, 0.4822064595)
    close(grad, [[[[-0.0492454329, 0.0356370166], [0.0704650459, 0.0]],
                  [[0.0473190196, -0.101600538], [0.0188990799, 0.0]],
                  [[0.0019264133, 0.0659635214], [-0.0893641259, 0.0]]]])
    none = ls.cross_entropy(t(LS10_LOGITS), torch.tensor(LS10_TARGET), label_smoothing=0.1,
                            ignore_index=255, reduction="none", backend=backend)
    assert none.shape == (1, 2, 2)
    close(none, [[[0.3913112967, 0.5477021174], [0.5076059644, 0.0]]])


def test_ls10_channels_last(backend):
    logits = [[[[2.0, 0.5, -1.0], [0.0, 1.5, 0.5]], [[1.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]]]
    loss = ls.cross_entropy(t(logits), torch.tensor(LS10_TARGET), label_smoothing=0.1,
                            ignore_index=255, dim=-1, backend=backend)
    close(loss, 0.4822064595)
    assert not math.isclose(loss.item(), 0.5563167825, rel_tol=1e-4)  # K from a spatial axis


# LS-12: empty and fully ignored input -----------------------------------------------------------
def test_ls12_empty_batch(backend):
    x = torch.zeros(0, 3, dtype=F64, requires_grad=True)
    y = torch.zeros(0, dtype=torch.long)
    for reduction in ("mean", "sum"):
        loss = ls.cross_entropy(x, y, label_smoothing=0.1, reduction=reduction, backend=backend)
        assert loss.item() == 0.0 and not torch.isnan(loss)
        (grad,) = torch.autograd.grad(loss, x)
        assert grad.shape == (0, 3)
    none = ls.cross_entropy(x, y, label_smoothing=0.1, reduction="none", backend=backend)
    assert none.shape == (0,)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ls12_all_ignored(backend, reduction):
    loss, grad = loss_and_grad(ls.cross_entropy, t([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]),
                               torch.tensor([-100, -100]), label_smoothing=0.1,
                               reduction=reduction, backend=backend)
    assert loss.item() == 0.0
    assert torch.equal(grad, torch.zeros(2, 3, dtype=F64))


# LS-14: binary smoothing ------------------------------------------------------------------------
def test_ls14_binary_smoothing():
    loss, grad = loss_and_grad(ls.binary_cross_entropy_with_logits, t([2.0, -1.0, 0.5, -3.0]),
                               t([1.0, 0.0, 1.0, 0.0]), label_smoothing=0.2)
    close(loss, 0.4032135086)
    close(grad, [-0.0048007305, 0.0422353553, -0.0693851672, -0.0131435317])
    for faulty in (0.5907135086, 0.3844635086, 0.3657135086):
        assert not math.isclose(loss.item(), faulty, rel_tol=1e-4)


# LS-17: the hand-written gradient ---------------------------------------------------------------
LS17_LOGITS = [[1.0, 2.0, 0.5], [0.2, -0.3, 1.5], [0.0, 0.0, 0.0]]


def test_ls17_gradient(backend):
    loss, grad = loss_and_grad(ls.cross_entropy, t(LS17_LOGITS), torch.tensor([1, -100, 2]),
                               label_smoothing=0.2, backend=backend)
    close(loss, 0.8648238697)
    close(grad, [[0.0822786155, -0.1190674737, 0.0367888582], [0.0, 0.0, 0.0],
                 [0.1333333333, 0.1333333333, -0.2666666667]])


def test_ls17_weighted_gradient(backend):
    loss, grad = loss_and_grad(ls.cross_entropy, t(LS17_LOGITS), torch.tensor([1, -100, 2]),
                               t([0.5, 1.0, 2.0]), label_smoothing=0.2, backend=backend)
    close(loss, 0.909101202)
    close(grad, [[0.0685326758, -0.07239463, 0.0038619542], [0.0, 0.0, 0.0],
                 [0.1925925926, 0.1814814815, -0.3740740741]])
    assert not math.isclose(loss.item(), 0.9427533427, rel_tol=1e-4)  # per-sample weighting
