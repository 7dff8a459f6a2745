"""Tests of labelsmooth.variants against independent float64 oracles.

Oracles are written here in plain torch (``log_softmax``/``softmax`` and the textbook formula, with
autograd for the gradient); the literal numbers come from a separate numpy computation (values
from the formula, gradients by central differences with h = 1e-6): a third, independent check.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import labelsmooth as ls
from labelsmooth import variants as V

F64 = torch.float64
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# The fixed example: 4 rows, 4 classes. p_y = 0.6125, 0.0536, 0.5663, 0.9476.
Z = [[1.0, -0.5, 2.0, 0.3], [0.2, 0.1, -1.0, 3.0], [-2.0, 0.5, 0.5, 1.5], [4.0, 0.0, 0.5, -1.0]]
Y = [2, 0, 3, 0]
PRIOR = [0.1, 0.2, 0.3, 0.4]


# --------------------------------------------------------------------------------------------------
# Oracles (float64, textbook formulas)


def o_q(y: torch.Tensor, k: int, eps: float, u: torch.Tensor | None = None) -> torch.Tensor:
    u = torch.full((k,), 1.0 / k, dtype=F64) if u is None else u
    return (1 - eps) * torch.eye(k, dtype=F64)[y] + eps * u


def o_ce(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return -(q * torch.log_softmax(z, -1)).sum(-1)


def o_confidence(z, y, beta, eps):
    p = torch.softmax(z, -1)
    return o_ce(z, o_q(y, z.shape[-1], eps)) + beta * (p * torch.log(p)).sum(-1)


def o_relax(z, y, alpha):
    p_y = torch.softmax(z, -1).gather(-1, y[:, None])[:, 0]
    first = (1 - alpha) * torch.log((1 - alpha) / p_y)
    second = alpha * torch.log(alpha / (1 - p_y)) if alpha > 0 else torch.zeros_like(p_y)
    return torch.where(p_y >= 1 - alpha, torch.zeros_like(p_y), first + second)


def o_focal(z, y, gamma, eps, q=None):
    q = o_q(y, z.shape[-1], eps) if q is None else q
    return -(q * (1 - torch.softmax(z, -1)) ** gamma * torch.log_softmax(z, -1)).sum(-1)


def o_poly(z, y, eps1, eps, q=None):
    q = o_q(y, z.shape[-1], eps) if q is None else q
    return o_ce(z, q) + eps1 * (1 - (q * torch.softmax(z, -1)).sum(-1))


def o_prior(z, y, prior, eps):
    return o_ce(z, o_q(y, z.shape[-1], eps, torch.tensor(prior, dtype=F64)))


def value_and_grad(fn, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = z.detach().clone().requires_grad_(True)
    out = fn(z)
    out.sum().backward()
    return out.detach(), z.grad


def fixed() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(Z, dtype=F64), torch.tensor(Y)


# --------------------------------------------------------------------------------------------------
# Fixed inputs: library == oracle == literal numbers (values and gradients of the mean)

LITERALS = {
    "confidence_penalty": (
        lambda z, y: V.confidence_penalty(z, y, beta=0.3, label_smoothing=0.1, reduction="none"),
        lambda z, y: o_confidence(z, y, 0.3, 0.1),
        [0.310770333758, 2.743992066289, 0.392639466863, 0.289692176356],
        [[0.042328889, -0.001066772, -0.053261245, 0.011999127],
         [-0.227676059, -0.003380027, -0.006626981, 0.237683067],
         [-0.005852666, 0.037650039, 0.037650039, -0.069447413],
         [0.019982383, -0.006855518, -0.006175219, -0.006951645]]),
    "label_relaxation": (
        lambda z, y: V.label_relaxation(z, y, alpha=0.2, reduction="none"),
        lambda z, y: o_relax(z, y, 0.2),
        [0.081369021037, 1.851325253489, 0.121615954799, 0.0],
        [[0.027257138, 0.00608189, -0.046874522, 0.013535494],
         [-0.186595662, 0.009565566, 0.0031841, 0.173845995],
         [0.002303713, 0.028064964, 0.028064964, -0.05843364],
         [0.0, 0.0, 0.0, 0.0]]),
    "focal": (
        lambda z, y: V.focal_loss(z, y, gamma=2.0, label_smoothing=0.1, reduction="none"),
        lambda z, y: o_focal(z, y, 2.0, 0.1),
        [0.201057524599, 2.592369007768, 0.246389861238, 0.306561938519],
        [[0.017920704, -0.001861024, -0.020785875, 0.004726195],
         [-0.260217094, 0.006680014, -0.002180941, 0.255718022],
         [-0.004681895, 0.019784159, 0.019784159, -0.034886423],
         [0.019426105, -0.006509144, -0.00648921, -0.006427751]]),
    "focal_gamma_half": (
        lambda z, y: V.focal_loss(z, y, gamma=0.5, label_smoothing=0.1, reduction="none"),
        lambda z, y: o_focal(z, y, 0.5, 0.1),
        [0.439504871133, 2.810068056705, 0.517074770606, 0.325348261146],
        [[0.042808963, 0.004472476, -0.06516085, 0.017879411],
         [-0.229684033, 0.006034715, -0.002214566, 0.225863884],
         [-0.002505462, 0.040926886, 0.040926886, -0.07934831],
         [0.014105156, -0.004718159, -0.003680909, -0.005706088]]),
    "poly": (
        lambda z, y: V.poly1_loss(z, y, epsilon1=2.0, label_smoothing=0.1, reduction="none"),
        lambda z, y: o_poly(z, y, 2.0, 0.1),
        [1.467699772242, 4.741871286145, 1.636914547193, 0.61052326144],
        [[0.112187625, 0.020177006, -0.184929016, 0.052564384],
         [-0.240679801, 0.007049307, -0.001823045, 0.235453539],
         [0.002382279, 0.098912681, 0.098912681, -0.200207641],
         [-0.016667074, 0.005490723, 0.01310718, -0.001930829]]),
    "prior": (
        lambda z, y: V.prior_smoothing(z, y, PRIOR, label_smoothing=0.2, reduction="none"),
        lambda z, y: o_prior(z, y, PRIOR, 0.2),
        [0.746203214415, 2.777882520819, 0.738692337303, 0.82377862424],
        [[0.051331715, 0.002569305, -0.061874522, 0.007973502],
         [-0.191595662, 0.002128747, -0.010962691, 0.200429606],
         [-0.000725066, 0.042079353, 0.037079353, -0.07843364],
         [0.031910467, -0.005660833, -0.007845924, -0.01840371]]),
}


@pytest.mark.parametrize("name", sorted(LITERALS))
def test_fixed_values_and_gradients(name):
    lib, oracle, rows, grad_of_mean = LITERALS[name]
    z, y = fixed()
    got, got_grad = value_and_grad(lambda t: lib(t, y), z)
    want, want_grad = value_and_grad(lambda t: oracle(t, y), z)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-11, atol=1e-13)
    torch.testing.assert_close(got, torch.tensor(rows, dtype=F64), rtol=0, atol=1e-11)
    # The literals are gradients of the mean over the 4 rows.
    torch.testing.assert_close(got_grad / 4, torch.tensor(grad_of_mean, dtype=F64),
                               rtol=0, atol=2e-9)


def test_label_relaxation_gradient_is_p_minus_q_star():
    z, y = fixed()
    _, grad = value_and_grad(lambda t: V.label_relaxation(t, y, alpha=0.2, reduction="sum"), z)
    p = torch.softmax(z, -1)
    onehot = torch.eye(4, dtype=F64)[y]
    others = p * (1 - onehot) / (1 - (p * onehot).sum(-1, keepdim=True))
    q_star = 0.8 * onehot + 0.2 * others
    expected = (p - q_star) * torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=F64)[:, None]
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------------
# Random inputs against the oracles (fp64), all reductions and ignore_index

ALL = {
    "confidence_penalty": (lambda z, y, **kw: V.confidence_penalty(z, y, beta=0.7,
                                                                   label_smoothing=0.2, **kw),
                           lambda z, y: o_confidence(z, y, 0.7, 0.2)),
    "label_relaxation": (lambda z, y, **kw: V.label_relaxation(z, y, alpha=0.3, **kw),
                         lambda z, y: o_relax(z, y, 0.3)),
    "focal": (lambda z, y, **kw: V.focal_loss(z, y, gamma=1.5, label_smoothing=0.2, **kw),
              lambda z, y: o_focal(z, y, 1.5, 0.2)),
    "poly": (lambda z, y, **kw: V.poly1_loss(z, y, epsilon1=-0.7, label_smoothing=0.2, **kw),
             lambda z, y: o_poly(z, y, -0.7, 0.2)),
    "prior": (lambda z, y, **kw: V.prior_smoothing(z, y, [0.5, 0.1, 0.1, 0.1, 0.2],
                                                   label_smoothing=0.3, **kw),
              lambda z, y: o_prior(z, y, [0.5, 0.1, 0.1, 0.1, 0.2], 0.3)),
    "online_first_epoch": (
        lambda z, y, **kw: V.OnlineLabelSmoothing(5, label_smoothing=0.2, **kw)(z, y),
        lambda z, y: o_ce(z, o_q(y, 5, 0.2))),
}


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_random_against_oracle_with_ignore(name, reduction):
    lib, oracle = ALL[name]
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(9, 5, generator=gen, dtype=F64) * 2
    y = torch.randint(0, 5, (9,), generator=gen)
    y[[2, 6]] = -1
    z[2] = -math.inf  # ignored rows may hold anything
    z[6] = math.nan
    kept = y != -1
    got, got_grad = value_and_grad(lambda t: lib(t, y, ignore_index=-1, reduction=reduction), z)

    def want_fn(t):
        rows = torch.zeros(9, dtype=F64)
        rows = rows.index_put((kept.nonzero()[:, 0],), oracle(t[kept], y[kept]))
        if reduction == "none":
            return rows
        return rows.sum() if reduction == "sum" else rows.sum() / kept.sum()

    want, want_grad = value_and_grad(want_fn, z.masked_fill(~kept[:, None], 0.0))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-11, atol=1e-13)
    assert got_grad[~kept].abs().max() == 0
    if reduction == "none":
        assert got.shape == (9,) and bool((got[~kept] == 0).all())


@pytest.mark.parametrize("name", sorted(ALL))
def test_fully_ignored_mean_is_zero(name):
    lib, _ = ALL[name]
    z = torch.randn(3, 5, dtype=F64, requires_grad=True)
    y = torch.full((3,), -100)
    loss = lib(z, y)
    loss.backward()
    assert loss.item() == 0.0 and z.grad.abs().max() == 0


@pytest.mark.parametrize("name", sorted(ALL))
def test_float32_matches_float64(name):
    lib, _ = ALL[name]
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(6, 5, generator=gen, dtype=F64)
    y = torch.randint(0, 5, (6,), generator=gen)
    v64, g64 = value_and_grad(lambda t: lib(t, y, reduction="none"), z)
    v32, g32 = value_and_grad(lambda t: lib(t, y, reduction="none"), z.float())
    assert v32.dtype == torch.float32 and g32.dtype == torch.float32
    torch.testing.assert_close(v32.double(), v64, rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(g32.double(), g64, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name", sorted(ALL))
def test_spatial_input_dim1_equals_flattened(name):
    lib, _ = ALL[name]
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(2, 5, 3, generator=gen, dtype=F64)
    y = torch.randint(0, 5, (2, 3), generator=gen)
    got = lib(z, y, reduction="none")
    flat = lib(z.movedim(1, -1).reshape(-1, 5), y.reshape(-1), reduction="none")
    assert got.shape == (2, 3)
    torch.testing.assert_close(got.reshape(-1), flat, rtol=1e-14, atol=1e-15)


PROB_TARGET = {
    "confidence_penalty": (lambda z, t: V.confidence_penalty(z, t, beta=0.5, label_smoothing=0.1),
                           lambda z, q: o_ce(z, q) + 0.5 * (torch.softmax(z, -1)
                                                            * torch.log_softmax(z, -1)).sum(-1)),
    "focal": (lambda z, t: V.focal_loss(z, t, gamma=2.0, label_smoothing=0.1),
              lambda z, q: o_focal(z, None, 2.0, 0.0, q=q)),
    "poly": (lambda z, t: V.poly1_loss(z, t, epsilon1=1.0, label_smoothing=0.1),
             lambda z, q: o_poly(z, None, 1.0, 0.0, q=q)),
    "prior": (lambda z, t: V.prior_smoothing(z, t, [0.1, 0.2, 0.3, 0.4], label_smoothing=0.1),
              o_ce),
}


@pytest.mark.parametrize("name", sorted(PROB_TARGET))
def test_probability_targets(name):
    lib, oracle = PROB_TARGET[name]
    gen = torch.Generator().manual_seed(11)
    z = torch.randn(5, 4, generator=gen, dtype=F64)
    t = torch.softmax(torch.randn(5, 4, generator=gen, dtype=F64), -1)
    u = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64) if name == "prior" else 0.25
    q = 0.9 * t + 0.1 * u
    want, want_grad = value_and_grad(lambda s: oracle(s, q).mean(), z)
    got, got_grad = value_and_grad(lambda s: lib(s, t), z)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("fn", [
    lambda z, y: V.confidence_penalty(z, y, beta=0.5),
    lambda z, y: V.focal_loss(z, y, gamma=0.5),
    lambda z, y: V.poly1_loss(z, y, epsilon1=1.0),
    lambda z, y: V.label_relaxation(z, y, alpha=0.1),
], ids=["confidence_penalty", "focal", "poly", "label_relaxation"])
def test_minus_inf_logits_give_no_nan(fn):
    z = torch.tensor([[2.0, -math.inf, 0.5, -math.inf], [-math.inf, 1.0, 0.0, 3.0]], dtype=F64,
                     requires_grad=True)
    y = torch.tensor([0, 3])
    loss = fn(z, y)
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(z.grad).all())
    assert z.grad[0, 1] == 0 and z.grad[1, 0] == 0


# --------------------------------------------------------------------------------------------------
# Property tests


def logits_and_targets(max_abs: float):
    @st.composite
    def build(draw):
        n = draw(st.integers(1, 6))
        k = draw(st.integers(2, 6))
        z = draw(st.lists(st.floats(-max_abs, max_abs, allow_nan=False, width=32),
                          min_size=n * k, max_size=n * k))
        y = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
        return torch.tensor(z, dtype=F64).reshape(n, k), torch.tensor(y)
    return build()


VARIANT_FNS = {
    "confidence_penalty": lambda z, y: V.confidence_penalty(z, y, beta=2.0, label_smoothing=0.1),
    "label_relaxation": lambda z, y: V.label_relaxation(z, y, alpha=0.25),
    "focal_gamma_2": lambda z, y: V.focal_loss(z, y, gamma=2.0, label_smoothing=0.1),
    "focal_gamma_0.3": lambda z, y: V.focal_loss(z, y, gamma=0.3, label_smoothing=0.1),
    "poly": lambda z, y: V.poly1_loss(z, y, epsilon1=3.0, label_smoothing=0.1),
    "prior": lambda z, y: V.prior_smoothing(
        z, y, torch.full((z.shape[1],), 1.0 / z.shape[1]) * 0.5
        + 0.5 * torch.eye(z.shape[1], dtype=F64)[0], label_smoothing=0.2),
    "online": lambda z, y: V.OnlineLabelSmoothing(z.shape[1], label_smoothing=0.1)(z, y),
}


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("name", sorted(VARIANT_FNS))
@SETTINGS
@given(data=logits_and_targets(1e4))
def test_gradient_finite_for_large_logits(name, dtype, data):
    z, y = data
    z = z.to(dtype).requires_grad_(True)
    loss = VARIANT_FNS[name](z, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert bool(torch.isfinite(z.grad).all())


@SETTINGS
@given(data=logits_and_targets(30.0), eps=st.floats(0.0, 1.0))
def test_zero_strength_is_smoothed_cross_entropy(data, eps):
    strength = 0.0
    z, y = data
    k = z.shape[1]
    want, want_grad = value_and_grad(lambda t: ls.cross_entropy(t, y, label_smoothing=eps), z)
    for fn in (
        lambda t: V.focal_loss(t, y, gamma=strength, label_smoothing=eps),
        lambda t: V.poly1_loss(t, y, epsilon1=strength, label_smoothing=eps),
        lambda t: V.confidence_penalty(t, y, beta=strength, label_smoothing=eps),
        lambda t: V.prior_smoothing(t, y, torch.full((k,), 1.0 / k, dtype=F64),
                                    label_smoothing=eps),
        lambda t: V.OnlineLabelSmoothing(k, label_smoothing=eps, dtype=F64)(t, y),
    ):
        got, got_grad = value_and_grad(fn, z)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-12)


@SETTINGS
@given(data=logits_and_targets(30.0))
def test_label_relaxation_alpha_zero_is_cross_entropy(data):
    z, y = data
    p_y = torch.softmax(z, -1).gather(-1, y[:, None])
    # alpha = 0 relaxes nothing; rows with p_y == 1 in float64 have CE < 1e-16 (and relaxation 0).
    want, want_grad = value_and_grad(lambda t: ls.cross_entropy(t, y, reduction="none"), z)
    got, got_grad = value_and_grad(lambda t: V.label_relaxation(t, y, alpha=0.0,
                                                                  reduction="none"), z)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-13)
    assert bool((p_y <= 1).all())


@SETTINGS
@given(data=logits_and_targets(20.0), alpha=st.floats(0.01, 0.9))
def test_label_relaxation_zero_inside_credal_set(data, alpha):
    z, y = data
    p_y = torch.softmax(z, -1).gather(-1, y[:, None])[:, 0]
    inside = p_y >= 1 - alpha
    got, grad = value_and_grad(lambda t: V.label_relaxation(t, y, alpha=alpha, reduction="none"), z)
    assert bool((got[inside] == 0).all())
    assert bool((grad[inside] == 0).all())
    assert bool((got[~inside] > 0).all())
    want = o_relax(z, y, alpha)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_label_relaxation_constructed_inside_and_outside():
    # p_y = 0.95 >= 1 - 0.1: exactly zero; p_y = 0.5 < 0.9: KL closed form.
    z = torch.log(torch.tensor([[0.95, 0.03, 0.02], [0.5, 0.3, 0.2]], dtype=F64))
    y = torch.tensor([0, 0])
    got, grad = value_and_grad(lambda t: V.label_relaxation(t, y, alpha=0.1, reduction="none"), z)
    assert got[0].item() == 0.0 and bool((grad[0] == 0).all())
    want = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert got[1].item() == pytest.approx(want, rel=1e-13)
    # gradient p - q*, q* = (0.9, 0.1 * 0.6, 0.1 * 0.4)
    torch.testing.assert_close(grad[1], torch.tensor([0.5 - 0.9, 0.3 - 0.06, 0.2 - 0.04],
                                                     dtype=F64), rtol=1e-12, atol=1e-15)


def test_focal_saturated_gradient_uses_the_limit():
    # p_y = 1 in float32 with gamma < 1: naive autograd gives NaN; the limit is finite.
    z = torch.tensor([[100.0, 0.0, 0.0]], requires_grad=True)
    loss = V.focal_loss(z, torch.tensor([0]), gamma=0.5, label_smoothing=0.3)
    loss.backward()
    # Classes 1, 2: p = 0, so g_c = q_c = 0.1; class 0: w = 0, g_0 = 0. grad = p * sum(g) - g.
    torch.testing.assert_close(z.grad, torch.tensor([[0.2, -0.1, -0.1]]), rtol=0, atol=1e-6)
    assert loss.item() == pytest.approx(0.1 * 100 * 2, rel=1e-6)


# --------------------------------------------------------------------------------------------------
# Online label smoothing: the state over two epochs


def logits_with_softmax(rows: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is exactly (to rounding) the given distributions."""
    return torch.log(torch.tensor(rows, dtype=F64))


def test_online_two_epochs_exact_matrix():
    alpha, eps = 0.5, 0.3
    m = V.OnlineLabelSmoothing(3, alpha=alpha, label_smoothing=eps, dtype=F64)
    s0 = [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]
    torch.testing.assert_close(m.soft_targets, torch.tensor(s0, dtype=F64))

    # Epoch 1: two batches. Correct: rows 0, 1 (class 0) and 3 (class 1); row 2 (class 2) is
    # predicted 0 (wrong); row 4 is ignored although "correct"; the eval-mode batch is not counted.
    p1 = [[0.7, 0.2, 0.1], [0.5, 0.25, 0.25], [0.6, 0.1, 0.3]]
    y1 = torch.tensor([0, 0, 2])
    loss = m(logits_with_softmax(p1), y1)
    # First epoch: plain uniform label smoothing with eps.
    want = o_ce(logits_with_softmax(p1), o_q(y1, 3, eps)).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-14)
    m(logits_with_softmax([[0.1, 0.8, 0.1], [0.9, 0.05, 0.05]]), torch.tensor([1, -100]))
    m.eval()
    m(logits_with_softmax([[0.2, 0.2, 0.6]]), torch.tensor([2]))
    m.train()
    torch.testing.assert_close(m.running_count, torch.tensor([2.0, 1.0, 0.0], dtype=F64))
    m.on_epoch_end()
    s1 = [[0.6, 0.225, 0.175], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]  # class 2 kept its row
    torch.testing.assert_close(m.soft_targets, torch.tensor(s1, dtype=F64), rtol=0, atol=1e-15)
    assert int(m.epochs_completed) == 1
    assert m.running_sum.abs().max() == 0 and m.running_count.abs().max() == 0

    # Epoch 2: targets are alpha * onehot + (1 - alpha) * S1[y].
    p2 = [[0.2, 0.3, 0.5], [0.3, 0.6, 0.1], [0.1, 0.7, 0.2], [0.4, 0.35, 0.25]]
    y2 = torch.tensor([2, 1, 1, 2])
    z2 = logits_with_softmax(p2)
    q2 = alpha * torch.eye(3, dtype=F64)[y2] + (1 - alpha) * torch.tensor(s1, dtype=F64)[y2]
    torch.testing.assert_close(q2[0], torch.tensor([0.05, 0.05, 0.9], dtype=F64))
    got, got_grad = value_and_grad(lambda t: m(t, y2), z2)
    want, want_grad = value_and_grad(lambda t: o_ce(t, q2).mean(), z2)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-12, atol=1e-15)
    m.on_epoch_end()
    # class 0: nothing correct -> keeps S1 row (not reset to S0); class 1: mean of rows 1, 2;
    # class 2: row 0 only (row 3 is predicted 0).
    s2 = [[0.6, 0.225, 0.175], [0.2, 0.65, 0.15], [0.2, 0.3, 0.5]]
    torch.testing.assert_close(m.soft_targets, torch.tensor(s2, dtype=F64), rtol=0, atol=1e-15)
    assert int(m.epochs_completed) == 2
    torch.testing.assert_close(m.soft_targets.sum(-1), torch.ones(3, dtype=F64))


def test_online_alpha_one_is_cross_entropy_after_first_epoch():
    gen = torch.Generator().manual_seed(4)
    m = V.OnlineLabelSmoothing(5, alpha=1.0, label_smoothing=0.2)
    z = torch.randn(7, 5, generator=gen, dtype=F64)
    y = torch.randint(0, 5, (7,), generator=gen)
    first = m(z, y)
    assert first.item() == pytest.approx(o_ce(z, o_q(y, 5, 0.2)).mean().item(), rel=1e-14)
    m.on_epoch_end()
    got, got_grad = value_and_grad(lambda t: m(t, y), z)
    want, want_grad = value_and_grad(lambda t: o_ce(t, o_q(y, 5, 0.0)).mean(), z)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-12, atol=1e-15)


def test_prior_module_checks_once_and_survives_dtype_change():
    m = V.PriorSmoothingLoss([0.1, 0.2, 0.3, 0.4], label_smoothing=0.2)
    z, y = fixed()
    want = m(z, y)
    m.half()  # the float16 prior no longer sums to 1 within 1e-5; it is not re-checked per call
    torch.testing.assert_close(m(z, y), want, rtol=1e-3, atol=0)


def test_online_state_dict_round_trip():
    gen = torch.Generator().manual_seed(0)
    a = V.OnlineLabelSmoothing(4, alpha=0.4, label_smoothing=0.1)
    for _ in range(2):
        for _ in range(3):
            z = torch.randn(16, 4, generator=gen) * 3
            a(z, torch.randint(0, 4, (16,), generator=gen))
        a.on_epoch_end()
    z = torch.randn(16, 4, generator=gen) * 3
    y = torch.randint(0, 4, (16,), generator=gen)
    a(z, y)  # mid-epoch: accumulators are non-zero
    assert set(a.state_dict()) == {"soft_targets", "running_sum", "running_count",
                                   "epochs_completed"}
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = V.OnlineLabelSmoothing(4, alpha=0.4, label_smoothing=0.1)
    b.load_state_dict(torch.load(buf))
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert torch.equal(a(z, y), b(z, y))
    a.on_epoch_end()
    b.on_epoch_end()
    assert torch.equal(a.soft_targets, b.soft_targets)
    assert not torch.equal(a.soft_targets, V.OnlineLabelSmoothing(4).soft_targets)
    assert torch.equal(a(z, y), b(z, y))


def test_online_rejects_probability_targets_and_wrong_class_count():
    m = V.OnlineLabelSmoothing(3)
    with pytest.raises(TypeError, match="class-index targets"):
        m(torch.zeros(2, 3), torch.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="num_classes=3"):
        m(torch.zeros(2, 4), torch.tensor([0, 1]))


# --------------------------------------------------------------------------------------------------
# mixup / CutMix: smoothing once, not twice


def test_mix_targets_smooths_once():
    a, b = torch.tensor([0, 1]), torch.tensor([2, 3])
    q = V.mix_targets(a, b, 0.3, 4, 0.1, dtype=F64)
    torch.testing.assert_close(q, torch.tensor([[0.295, 0.025, 0.655, 0.025],
                                                [0.025, 0.295, 0.025, 0.655]], dtype=F64))
    z = torch.tensor([[1.0, -0.5, 2.0, 0.3], [0.2, 0.1, -1.0, 3.0]], dtype=F64)
    once = ls.cross_entropy(z, q)
    # The mixup criterion: lam * CE_eps(z, a) + (1 - lam) * CE_eps(z, b), smoothed once.
    want = (0.3 * o_ce(z, o_q(a, 4, 0.1)) + 0.7 * o_ce(z, o_q(b, 4, 0.1))).mean()
    assert once.item() == pytest.approx(want.item(), rel=1e-14)
    # Smoothing again in the loss is a different loss: effective eps = 1 - 0.9^2 = 0.19.
    twice = ls.cross_entropy(z, q, label_smoothing=0.1)
    q_twice = 0.9 * q + 0.1 / 4
    torch.testing.assert_close(q_twice[0], torch.tensor([0.2905, 0.0475, 0.6145, 0.0475],
                                                        dtype=F64))
    want_twice = (0.3 * o_ce(z, o_q(a, 4, 0.19)) + 0.7 * o_ce(z, o_q(b, 4, 0.19))).mean()
    assert twice.item() == pytest.approx(want_twice.item(), rel=1e-14)
    assert abs(twice.item() - once.item()) > 1e-2


def test_mix_targets_probabilities_and_lam_edges():
    a = torch.tensor([[0.5, 0.5, 0.0]], dtype=F64)
    b = torch.tensor([2])
    torch.testing.assert_close(V.mix_targets(a, torch.tensor([[0.0, 0.0, 1.0]], dtype=F64), 1.0,
                                             3, 0.3, dtype=F64),
                               torch.tensor([[0.45, 0.45, 0.1]], dtype=F64))
    torch.testing.assert_close(V.mix_targets(torch.tensor([0]), b, 0.0, 3, 0.0, dtype=F64),
                               torch.tensor([[0.0, 0.0, 1.0]], dtype=F64))


# --------------------------------------------------------------------------------------------------
# The registry for `compare --losses`


def test_registry_names_defaults_and_hook():
    assert set(V.VARIANTS) == {"online", "confidence_penalty", "label_relaxation", "focal", "poly",
                               "prior"}
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(8, 5, generator=gen)
    y = torch.randint(0, 5, (8,), generator=gen)
    for name, factory in V.VARIANTS.items():
        params = {"prior": V.class_frequencies(y, 5)} if name == "prior" else {}
        module = factory(5, 0.1, **params)
        assert isinstance(module, torch.nn.Module)
        loss = module(z, y)
        assert loss.shape == () and torch.isfinite(loss)
        module.on_epoch_end()
    assert V.VARIANTS["focal"](5, 0.1).gamma == 2.0
    assert V.VARIANTS["poly"](5, 0.1).epsilon1 == 1.0
    assert V.VARIANTS["confidence_penalty"](5, 0.0).beta == 0.1
    assert V.VARIANTS["online"](5, 0.1).alpha == 0.5
    assert V.VARIANTS["label_relaxation"](5, 0.15).alpha == 0.15
    assert V.VARIANTS["label_relaxation"](5, 0.15, alpha=0.3).alpha == 0.3
    assert V.VARIANTS["focal"](5, 0.1, gamma=1.0).gamma == 1.0
    assert ls.variants is V and "variants" in ls.__all__


def test_registry_modules_match_functions():
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(6, 4, generator=gen, dtype=F64)
    y = torch.randint(0, 4, (6,), generator=gen)
    pairs = [
        (V.VARIANTS["confidence_penalty"](4, 0.1, beta=0.4),
         V.confidence_penalty(z, y, beta=0.4, label_smoothing=0.1)),
        (V.VARIANTS["label_relaxation"](4, 0.2), V.label_relaxation(z, y, alpha=0.2)),
        (V.VARIANTS["focal"](4, 0.1), V.focal_loss(z, y, gamma=2.0, label_smoothing=0.1)),
        (V.VARIANTS["poly"](4, 0.1), V.poly1_loss(z, y, epsilon1=1.0, label_smoothing=0.1)),
        (V.VARIANTS["prior"](4, 0.1, prior=PRIOR),
         V.prior_smoothing(z, y, PRIOR, label_smoothing=0.1)),
    ]
    for module, want in pairs:
        assert torch.equal(module(z, y), want)
    prior_module = V.VARIANTS["prior"](4, 0.1, prior=PRIOR)
    assert torch.equal(prior_module.state_dict()["prior"], torch.tensor(PRIOR, dtype=F64))


def test_class_frequencies():
    y = torch.tensor([0, 2, 2, -100, 1, 2])
    torch.testing.assert_close(V.class_frequencies(y, 4),
                               torch.tensor([0.2, 0.2, 0.6, 0.0], dtype=F64))
    with pytest.raises(ValueError, match="no \\(non-ignored\\) labels"):
        V.class_frequencies(torch.tensor([-100]), 3)
    with pytest.raises(IndexError, match="class id 5"):
        V.class_frequencies(torch.tensor([5]), 3)


# --------------------------------------------------------------------------------------------------
# Bad input: a clear error naming the argument, the value and what is allowed

Z2 = torch.zeros(2, 3)
Y2 = torch.tensor([0, 1])

BAD = [
    (lambda: V.confidence_penalty(Z2, Y2, beta=-0.1), ValueError, r"beta=-0\.1 .*allowed: a fin"),
    (lambda: V.confidence_penalty(Z2, Y2, beta=math.nan), ValueError, r"beta=nan"),
    (lambda: V.confidence_penalty(Z2, Y2, beta="1"), TypeError, r"beta must be"),
    (lambda: V.ConfidencePenaltyLoss(beta=-1.0), ValueError, r"beta=-1\.0"),
    (lambda: V.label_relaxation(Z2, Y2, alpha=1.0), ValueError, r"alpha=1\.0 .*\[0, 1\)"),
    (lambda: V.label_relaxation(Z2, Y2, alpha=-0.2), ValueError, r"alpha=-0\.2 .*\[0, 1\)"),
    (lambda: V.label_relaxation(Z2, Y2, alpha=math.nan), ValueError, r"alpha=nan"),
    (lambda: V.LabelRelaxationLoss(alpha=1.5), ValueError, r"alpha=1\.5"),
    (lambda: V.label_relaxation(Z2, torch.full((2, 3), 1 / 3)), TypeError, r"class-index"),
    (lambda: V.focal_loss(Z2, Y2, gamma=-1.0), ValueError, r"gamma=-1\.0 .*>= 0"),
    (lambda: V.focal_loss(Z2, Y2, gamma=math.inf), ValueError, r"gamma=inf"),
    (lambda: V.FocalLoss(gamma=-0.5), ValueError, r"gamma=-0\.5"),
    (lambda: V.poly1_loss(Z2, Y2, epsilon1=math.inf), ValueError, r"epsilon1=inf .*finite"),
    (lambda: V.poly1_loss(Z2, Y2, epsilon1=math.nan), ValueError, r"epsilon1=nan"),
    (lambda: V.PolyLoss(epsilon1=-math.inf), ValueError, r"epsilon1=-inf"),
    (lambda: V.poly1_loss(Z2, Y2, epsilon1=None), TypeError, r"epsilon1 must be a finite float"),
    (lambda: V.prior_smoothing(Z2, Y2, [0.5, 0.5]), ValueError, r"prior has shape \(2,\).*\(3,\)"),
    (lambda: V.prior_smoothing(Z2, Y2, [0.6, 0.6, -0.2]), ValueError, r"prior=.*negative"),
    (lambda: V.prior_smoothing(Z2, Y2, [0.2, 0.2, 0.2]), ValueError, r"prior sums to 0\.6"),
    (lambda: V.prior_smoothing(Z2, Y2, [math.nan, 0.5, 0.5]), ValueError, r"prior=.*NaN"),
    (lambda: V.prior_smoothing(Z2, Y2, torch.ones(3, 1) / 3), ValueError, r"prior has shape"),
    (lambda: V.prior_smoothing(Z2, Y2, torch.tensor([1, 0, 0])), TypeError, r"prior has dtype"),
    (lambda: V.prior_smoothing(Z2, Y2, "abc"), TypeError, r"prior must be"),
    (lambda: V.PriorSmoothingLoss([0.3, 0.3]), ValueError, r"prior sums to 0\.6"),
    (lambda: V.focal_loss(Z2, Y2, label_smoothing=1.5), ValueError, r"label_smoothing=1\.5"),
    (lambda: V.poly1_loss(Z2, Y2, reduction="avg"), ValueError, r"reduction='avg'"),
    (lambda: V.FocalLoss(reduction="avg"), ValueError, r"reduction='avg'"),
    (lambda: V.focal_loss(Z2, torch.tensor([0, 3])), IndexError, r"class id 3"),
    (lambda: V.OnlineLabelSmoothing(3, alpha=1.5), ValueError, r"alpha=1\.5 .*\[0, 1\]"),
    (lambda: V.OnlineLabelSmoothing(3, alpha=-0.5), ValueError, r"alpha=-0\.5"),
    (lambda: V.PriorSmoothingLoss([0.5, 0.5])(Z2, Y2), ValueError, r"prior's 2"),
    (lambda: V.OnlineLabelSmoothing(0), ValueError, r"num_classes=0"),
    (lambda: V.OnlineLabelSmoothing(3, label_smoothing=-0.1), ValueError, r"label_smoothing"),
    (lambda: V.mix_targets(Y2, Y2, 1.2, 3), ValueError, r"lam=1\.2"),
    (lambda: V.mix_targets(Y2, torch.tensor([0]), 0.5, 3), ValueError, r"target_b has shape"),
    (lambda: V.mix_targets(Y2, Y2, 0.5, 3, 2.0), ValueError, r"label_smoothing=2\.0"),
    (lambda: V.VARIANTS["prior"](3, 0.1), ValueError, r"needs prior="),
    (lambda: V.VARIANTS["prior"](3, 0.1, prior=[0.5, 0.5]), ValueError, r"prior has shape"),
    (lambda: V.VARIANTS["focal"](3, 0.1, beta=1.0), TypeError, r"unknown parameter\(s\) beta"),
    (lambda: V.VARIANTS["label_relaxation"](3, 1.0), ValueError, r"alpha=1\.0"),
    (lambda: V.VARIANTS["poly"](0, 0.1), ValueError, r"num_classes=0"),
]


@pytest.mark.parametrize(("call", "exc", "match"), BAD, ids=[m for _, _, m in BAD])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
