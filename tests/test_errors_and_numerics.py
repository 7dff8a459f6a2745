"""Bad input raises a clear error; numerically hard input gives the right number."""

from __future__ import annotations

import math

import pytest
import torch

import labelsmooth as ls
from conftest import loss_and_grad
from oracle import oracle_value_and_grad

X = torch.randn(4, 3)
Y = torch.tensor([0, 1, 2, 1])


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"label_smoothing": float("nan")}, ValueError, ["label_smoothing=nan", "[0, 1]"]),
    ({"label_smoothing": -0.1}, ValueError, ["label_smoothing=-0.1", "[0, 1]"]),
    ({"label_smoothing": 1.01}, ValueError, ["label_smoothing=1.01", "[0, 1]"]),
    ({"label_smoothing": "0.1"}, TypeError, ["label_smoothing", "str"]),
    ({"convention": "K-1"}, ValueError, ["convention='K-1'", "uniform, non_target"]),
    ({"weight_mode": "row"}, ValueError, ["weight_mode='row'", "class, sample"]),
    ({"reduction": "avg"}, ValueError, ["reduction='avg'", "mean, sum, none"]),
    ({"dim": 2}, ValueError, ["dim=2", "-2 .. 1"]),
    ({"dim": 1.0}, TypeError, ["dim", "float"]),
    ({"z_loss": -1.0}, ValueError, ["z_loss=-1.0", ">= 0"]),
    ({"z_loss": float("inf")}, ValueError, ["z_loss=inf"]),
    ({"backend": "cuda"}, ValueError, ["backend='cuda'", "reference"]),
    ({"ignore_index": 1.5}, TypeError, ["ignore_index", "float"]),
])
def test_bad_arguments(kwargs, error, words):
    with pytest.raises(error) as info:
        ls.cross_entropy(X, Y, **kwargs)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(("target", "error", "words"), [
    (torch.tensor([0, 1, 3, 1]), IndexError, ["class id 3", "0 .. 2", "ignore_index=-100"]),
    (torch.tensor([0, -1, 2, 1]), IndexError, ["class id -1"]),
    (torch.tensor([0, 1, 2]), ValueError, ["shape (3,)", "(4,)"]),
    (torch.rand(4, 2), ValueError, ["probability target", "(4, 3)"]),
    (torch.tensor([True, False, True, True]), TypeError, ["torch.bool"]),
    ([0, 1, 2, 1], TypeError, ["torch.Tensor", "list"]),
])
def test_bad_targets(target, error, words):
    with pytest.raises(error) as info:
        ls.cross_entropy(X, target)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(("weight", "error", "words"), [
    (torch.ones(4), ValueError, ["weight has shape (4,)", "(3,)"]),
    (torch.ones(3, 1), ValueError, ["weight has shape (3, 1)"]),
    (torch.ones(3, dtype=torch.long), TypeError, ["weight has dtype torch.int64"]),
    (torch.ones(3, device="meta"), ValueError, ["weight is on meta"]),
    ([1.0, 1.0, 1.0], TypeError, ["weight must be a torch.Tensor"]),
])
def test_bad_weights(weight, error, words):
    with pytest.raises(error) as info:
        ls.cross_entropy(X, Y, weight)
    for word in words:
        assert word in str(info.value)


def test_devices_and_zero_classes_and_numpy_scalars():
    with pytest.raises(ValueError, match="target is on meta but input is on cpu"):
        ls.cross_entropy(X, Y.to("meta"))
    with pytest.raises(ValueError, match="target is on cpu but input is on meta"):
        ls.binary_cross_entropy_with_logits(X.to("meta"), torch.rand(4, 3))
    with pytest.raises(ValueError, match=r"input has 0 classes along dim 1"):
        ls.cross_entropy(torch.randn(3, 0), torch.zeros(3, dtype=torch.long))
    import numpy as np  # numpy scalars are accepted like Python numbers (torch accepts them too)

    torch.testing.assert_close(
        ls.cross_entropy(X, Y, label_smoothing=np.float32(0.25), ignore_index=np.int64(1)),
        torch.nn.functional.cross_entropy(X, Y, label_smoothing=0.25, ignore_index=1))
    with pytest.raises(TypeError, match=r"dtype=torch\.int64 is not allowed"):
        ls.smooth_targets(Y, 3, 0.1, dtype=torch.long)
    with pytest.raises(TypeError, match="dim must be an int"):
        ls.LabelSmoothingCrossEntropy(dim="a")
    with pytest.raises(ValueError, match="backend='x' is not a known backend"):
        ls.LabelSmoothingCrossEntropy(backend="x")


def test_integer_logits_and_non_target_with_one_class():
    with pytest.raises(TypeError, match=r"input has dtype torch.int64.*float"):
        ls.cross_entropy(torch.ones(2, 3, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"non_target.*at least 2 classes.*got 1"):
        ls.cross_entropy(torch.zeros(2, 1), torch.tensor([0, 0]), label_smoothing=0.1,
                         convention="non_target")
    # eps = 0 with one class is well defined (loss 0)
    assert ls.cross_entropy(torch.zeros(2, 1), torch.tensor([0, 0]),
                            convention="non_target").item() == 0.0


def test_ignore_index_with_probability_targets_raises_like_torch():
    with pytest.raises(ValueError, match="ignore_index=0 applies to class-index targets only"):
        ls.cross_entropy(X, torch.softmax(X, 1), ignore_index=0)


def test_sample_weights_need_index_targets():
    with pytest.raises(ValueError, match="weight_mode='sample' needs class-index targets"):
        ls.cross_entropy(X, torch.softmax(X, 1), torch.ones(3), weight_mode="sample")


def test_environment_variable_chooses_backend(monkeypatch):
    monkeypatch.setenv("LABELSMOOTH_BACKEND", "nope")
    with pytest.raises(ValueError, match="LABELSMOOTH_BACKEND='nope'"):
        ls.cross_entropy(X, Y)
    monkeypatch.setenv("LABELSMOOTH_BACKEND", "reference")
    from labelsmooth import _dispatch
    assert _dispatch.requested("auto") == "reference"
    with ls.use_backend("cpu"):  # the context beats the environment, the argument beats both
        assert _dispatch.requested("auto") == "cpu"
        assert _dispatch.requested("reference") == "reference"


# ---- numerically hard input -------------------------------------------------------------------
def test_fp16_logits_of_1e4(backend):
    x = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], dtype=torch.float16)
    y = torch.tensor([0, 2])
    loss, grad = loss_and_grad(ls.cross_entropy, x, y, label_smoothing=0.1, backend=backend)
    want, want_grad = oracle_value_and_grad(x.double(), y, eps=0.1)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_masked_minus_inf_logits_never_nan(backend, eps):
    x = torch.tensor([[0.0, float("-inf"), 1.0], [2.0, float("-inf"), float("-inf")]])
    y = torch.tensor([0, 0])
    loss, grad = loss_and_grad(ls.cross_entropy, x, y, label_smoothing=eps, backend=backend)
    assert not torch.isnan(loss) and not torch.isnan(grad).any()
    p = torch.softmax(x[0].double(), 0)
    if eps == 0.0:
        # masked classes carry no target mass: a finite loss, zero gradient on them
        want = (-torch.log_softmax(x.double(), 1)[:, 0]).mean()
        torch.testing.assert_close(loss.double(), want, rtol=1e-6, atol=1e-7)
        assert grad[:, 1].eq(0).all()
    else:
        # eps/K of the target sits on an impossible class: the loss is +inf, the gradient finite
        assert loss.item() == math.inf
        assert torch.isfinite(grad).all()
    q0 = torch.tensor([1 - eps + eps / 3, eps / 3, eps / 3], dtype=torch.float64)
    torch.testing.assert_close(grad[0].double(), (p - q0) / 2, rtol=1e-6, atol=1e-7)


def test_fully_masked_ignored_row_has_zero_gradient(backend):
    x = torch.tensor([[float("-inf")] * 3, [1.0, 2.0, 3.0]])
    loss, grad = loss_and_grad(ls.cross_entropy, x, torch.tensor([-100, 1]), label_smoothing=0.1,
                               backend=backend)
    assert torch.isfinite(loss) and torch.equal(grad[0], torch.zeros(3))


def test_epsilon_one_is_the_uniform_target(backend):
    x = torch.tensor([[1.0, 2.0, 4.0]], dtype=torch.float64)
    loss, grad = loss_and_grad(ls.cross_entropy, x, torch.tensor([0]), label_smoothing=1.0,
                               backend=backend)
    torch.testing.assert_close(loss, torch.logsumexp(x, 1)[0] - x.mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, torch.softmax(x, 1) - 1 / 3, rtol=1e-12, atol=1e-15)


def test_binary_errors_and_weights():
    x = torch.tensor([[2.0, -1.0], [0.5, -3.0]], dtype=torch.float64)
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    w = torch.tensor([1.0, 2.0], dtype=torch.float64)
    pw = torch.tensor([3.0, 0.5], dtype=torch.float64)
    got = ls.binary_cross_entropy_with_logits(x, t, w, pos_weight=pw, label_smoothing=0.2,
                                              reduction="none")
    ts = t * 0.8 + 0.1
    want = -w * (pw * ts * torch.log(torch.sigmoid(x)) + (1 - ts) * torch.log(1 - torch.sigmoid(x)))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"pos_weight has shape \(3,\)"):
        ls.binary_cross_entropy_with_logits(x, t, pos_weight=torch.ones(3))
    per_row = torch.tensor([[2.0], [0.5]], dtype=torch.float64)  # broadcasts like torch's
    torch.testing.assert_close(
        ls.binary_cross_entropy_with_logits(x, t, pos_weight=per_row, label_smoothing=0.2),
        torch.nn.functional.binary_cross_entropy_with_logits(x, ts, pos_weight=per_row))
    with pytest.raises(ValueError, match=r"target has shape \(2,\)"):
        ls.binary_cross_entropy_with_logits(x, t[0])
    with pytest.raises(ValueError, match=r"label_smoothing=2\.0"):
        ls.binary_cross_entropy_with_logits(x, t, label_smoothing=2.0)


def test_smooth_targets():
    q = ls.smooth_targets(torch.tensor([4, 0]), 5, 0.1, convention="non_target")
    torch.testing.assert_close(q, torch.tensor([[0.025, 0.025, 0.025, 0.025, 0.9],
                                                [0.9, 0.025, 0.025, 0.025, 0.025]]))
    q = ls.smooth_targets(torch.tensor(4), 5, 0.1)
    torch.testing.assert_close(q, torch.tensor([0.02, 0.02, 0.02, 0.02, 0.92]))
    soft = torch.tensor([[0.5, 0.5, 0.0]])
    torch.testing.assert_close(ls.smooth_targets(soft, 3, 0.3),
                               torch.tensor([[0.45, 0.45, 0.1]]))
    with pytest.raises(IndexError, match=r"class id 5.*0 \.\. 4$"):
        ls.smooth_targets(torch.tensor([5]), 5, 0.1)
    with pytest.raises(ValueError, match="num_classes=0"):
        ls.smooth_targets(torch.tensor([0]), 0, 0.1)
