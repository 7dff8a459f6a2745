"""labelsmooth.metrics: ECE (hand-computed and against torchmetrics), reliability bins, NLL, confidence gap,
logit gap and temperature scaling (recovers a known T; matches an independent scipy optimiser)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from labelsmooth import metrics


def _logits_from_probs(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).log()


# Confidences chosen away from the 15-bin edges (multiples of 1/15).
HAND_PROBS = [
    [0.95, 0.03, 0.02],  # conf 0.95, bin 14, correct
    [0.90, 0.06, 0.04],  # conf 0.90, bin 13, wrong
    [0.62, 0.30, 0.08],  # conf 0.62, bin 9, correct
    [0.18, 0.18, 0.64],  # conf 0.64, bin 9, wrong
    [0.45, 0.35, 0.20],  # conf 0.45, bin 6, correct
]
HAND_TARGET = [0, 1, 0, 0, 0]


def test_ece_hand_computed() -> None:
    # bins: {0.95: acc 1}, {0.90: acc 0}, {0.62, 0.64: acc 1/2}, {0.45: acc 1}
    expected = (abs(1 - 0.95) + abs(0 - 0.90) + 2 * abs(0.5 - 0.63) + abs(1 - 0.45)) / 5
    assert expected == pytest.approx(0.352, abs=1e-15)
    logits = _logits_from_probs(HAND_PROBS)
    target = torch.tensor(HAND_TARGET)
    assert metrics.expected_calibration_error(logits, target) == pytest.approx(expected, abs=1e-12)
    bins = metrics.reliability_bins(logits.softmax(1), target)
    assert bins.count.tolist() == [0, 0, 0, 0, 0, 0, 1, 0, 0, 2, 0, 0, 0, 1, 1]
    assert bins.accuracy[9].item() == 0.5
    assert bins.confidence[9].item() == pytest.approx(0.63, abs=1e-12)
    assert bins.ece == pytest.approx(expected, abs=1e-12)
    assert bins.edges.tolist() == pytest.approx([m / 15 for m in range(16)], abs=1e-15)


def test_ece_bins_are_guo_half_open_intervals() -> None:
    # With 2 bins, a confidence of exactly 0.5 is in the first bin (0, 0.5], 1.0 in the last.
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.75, 0.25]], dtype=torch.float64)
    target = torch.tensor([1, 0, 0])  # argmax of row 0 is class 0: wrong
    bins = metrics.reliability_bins(probs, target, n_bins=2)
    assert bins.count.tolist() == [1.0, 2.0]
    assert bins.accuracy.tolist() == [0.0, 1.0]
    assert bins.confidence.tolist() == [0.5, 0.875]
    assert bins.ece == pytest.approx((0.5 + 2 * 0.125) / 3, abs=1e-15)


@pytest.mark.parametrize("scale", [0.5, 3.0, 10.0])
def test_ece_matches_torchmetrics(scale: float) -> None:
    from torchmetrics.classification import MulticlassCalibrationError

    gen = torch.Generator().manual_seed(int(scale * 10))
    logits = torch.randn(3000, 10, generator=gen, dtype=torch.float64) * scale
    target = torch.randint(0, 10, (3000,), generator=gen)
    target[:1500] = logits[:1500].argmax(1)  # half right by construction, so accuracy varies by bin
    reference = MulticlassCalibrationError(num_classes=10, n_bins=15, norm="l1")
    expected = float(reference(logits.softmax(1), target))
    assert metrics.expected_calibration_error(logits, target) == pytest.approx(expected, abs=1e-6)


def test_nll_confidence_gap_logit_gap_hand_computed() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 2.0]], dtype=torch.float64)
    target = torch.tensor([0, 0])
    lse = [math.log(math.exp(3) + math.exp(1) + 1), math.log(1 + 2 * math.exp(2))]
    assert metrics.nll(logits, target) == pytest.approx((lse[0] - 3 + lse[1] - 0) / 2, abs=1e-14)
    lse_t = [math.log(math.exp(1.5) + math.exp(0.5) + 1), math.log(1 + 2 * math.exp(1))]
    assert metrics.nll(logits, target, 2.0) == pytest.approx((lse_t[0] - 1.5 + lse_t[1]) / 2, abs=1e-14)
    conf = [math.exp(3 - lse[0]), math.exp(2 - lse[1])]  # row 1: argmax is class 1 (first max): wrong
    assert metrics.confidence_gap(logits, target) == pytest.approx(
        ((conf[0] - 1) + (conf[1] - 0)) / 2, abs=1e-14)
    assert metrics.logit_gap(logits) == pytest.approx(((3 - 0.5) + (2 - 1)) / 2, abs=1e-14)


def test_temperature_scaling_recovers_known_temperature() -> None:
    gen = torch.Generator().manual_seed(0)
    true_t = 2.5
    logits = torch.randn(40000, 6, generator=gen, dtype=torch.float64) * 4.0
    # labels drawn from softmax(z / T): T is then the maximum-likelihood temperature
    target = torch.multinomial((logits / true_t).softmax(1), 1, generator=gen).squeeze(1)
    t = metrics.fit_temperature(logits, target)
    assert t == pytest.approx(true_t, rel=0.03)
    # and it is the exact minimiser: zero derivative, and NLL grows on both sides
    log_t = torch.tensor(math.log(t), dtype=torch.float64, requires_grad=True)
    torch.nn.functional.cross_entropy(logits * torch.exp(-log_t), target).backward()
    assert abs(log_t.grad.item()) < 1e-7
    best = metrics.nll(logits, target, t)
    assert best < metrics.nll(logits, target, t * 1.01)
    assert best < metrics.nll(logits, target, t / 1.01)


def test_temperature_scaling_matches_scipy_oracle() -> None:
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    rng = np.random.default_rng(1)
    z = rng.normal(size=(500, 4)) * 3.0
    y = rng.integers(0, 4, size=500)
    y[:300] = z[:300].argmax(1)

    def objective(t: float) -> float:
        s = z / t
        return float(np.mean(logsumexp(s, axis=1) - s[np.arange(len(y)), y]))

    oracle = minimize_scalar(objective, bounds=(0.05, 50.0), method="bounded",
                             options={"xatol": 1e-10}).x
    t = metrics.fit_temperature(torch.from_numpy(z), torch.from_numpy(y))
    assert t == pytest.approx(oracle, rel=1e-6)


def test_temperature_of_calibrated_logits_is_one() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(40000, 3, generator=gen, dtype=torch.float64) * 2
    target = torch.multinomial(logits.softmax(1), 1, generator=gen).squeeze(1)
    assert metrics.fit_temperature(logits, target) == pytest.approx(1.0, rel=0.03)


@pytest.mark.parametrize("call", [
    lambda: metrics.expected_calibration_error(torch.zeros(3), torch.zeros(3, dtype=torch.long)),
    lambda: metrics.expected_calibration_error(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long)),
    lambda: metrics.expected_calibration_error(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)),
    lambda: metrics.reliability_bins(torch.ones(2, 2) / 2, torch.zeros(2, dtype=torch.long), 0),
    lambda: metrics.fit_temperature(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, dtype=torch.long)),
    lambda: metrics.logit_gap(torch.zeros(4, 1)),
])
def test_bad_arguments_raise_value_error(call) -> None:
    with pytest.raises(ValueError, match=r"must be|n_bins|empty"):
        call()
