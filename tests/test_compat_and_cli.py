"""The article's four formulations (their published numbers) and `labelsmooth explain`."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import labelsmooth as ls
from labelsmooth import compat
from labelsmooth.cli import main

LOGITS5 = torch.tensor([[0, 0.2, 0.7, 0.1, 0], [0, 0.9, 0.2, 0.2, 1], [1, 0.2, 0.7, 0.9, 1]])
LOGITS6 = torch.tensor([[0, 0.2, 0.7, 0.1, 0, 0.15], [0, 0.9, 0.2, 0.2, 1, 0.15],
                        [1, 0.2, 0.7, 0.9, 1, 0.15]])
TARGET = torch.tensor([2, 1, 0])


def approx(value: torch.Tensor, expected: float) -> None:
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_article_values():
    approx(compat.LabelSmoothingLoss(5, smoothing=0.1)(torch.eye(5)[:3], TARGET), 1.5881657749)
    approx(compat.SmoothCrossEntropyLoss(smoothing=0.5)(LOGITS6, TARGET), 1.6699437953)
    approx(compat.LinearCombinationLabelSmoothingLoss(smoothing=0.3)(LOGITS5, TARGET),
           1.3882861284)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    approx(compat.LinearCombinationLabelSmoothingLoss(smoothing=0.3, weight=w)(LOGITS5, TARGET),
           1.3576223122)
    approx(compat.LabelSmoothing(smoothing=0.3)(LOGITS5, TARGET), 1.3882861284)


def test_article_weighted_variants_on_ls16():
    """The article's weighted A/B forget to divide by sum(w[y]); C weights only the NLL."""
    x = torch.tensor([[1.0, 2.0, 0.5], [0.2, -0.3, 1.5]], dtype=torch.float64)
    y = torch.tensor([1, 0])
    w = torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64)
    approx(compat.LabelSmoothingLoss(3, smoothing=0.1, weight=w)(x, y), 0.5946112018)
    approx(compat.SmoothCrossEntropyLoss(weight=w, smoothing=0.1)(x, y), 0.5946112018)
    approx(compat.LinearCombinationLabelSmoothingLoss(smoothing=0.1, weight=w)(x, y),
           0.7324554619)
    approx(compat.LabelSmoothingLoss(3, smoothing=0.1)(x, y), 1.1062521452)


def test_article_reductions_and_unweighted_equivalences():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (6,), generator=g)
    none = compat.SmoothCrossEntropyLoss(smoothing=0.2, reduction="none")(x, y)
    assert none.shape == (6,)
    torch.testing.assert_close(none.sum(), compat.SmoothCrossEntropyLoss(
        smoothing=0.2, reduction="sum")(x, y))
    torch.testing.assert_close(compat.LabelSmoothingLoss(4, 0.2)(x, y),
                               ls.cross_entropy(x, y, label_smoothing=0.2,
                                                convention="non_target"))
    torch.testing.assert_close(compat.LinearCombinationLabelSmoothingLoss(0.2)(x, y),
                               ls.cross_entropy(x, y, label_smoothing=0.2))
    with pytest.raises(ValueError, match="classes=5 but pred has 4 classes"):
        compat.LabelSmoothingLoss(5, 0.1)(x, y)
    with pytest.raises(ValueError, match="reduction='avg'"):
        compat.SmoothCrossEntropyLoss(reduction="avg")(x, y)


@pytest.mark.parametrize(("convention", "expected"), [
    ("non_target", "[0.025, 0.025, 0.025, 0.025, 0.9]"),
    ("uniform", "[0.02, 0.02, 0.02, 0.02, 0.92]"),
])
def test_explain(capsys, convention, expected):
    assert main(["explain", "--classes", "5", "--smoothing", "0.1", "--convention", convention,
                 "--target", "4"]) == 0
    assert capsys.readouterr().out.strip() == expected


@pytest.mark.parametrize(("args", "words"), [
    (["--classes", "5", "--smoothing", "1.5"], "label_smoothing=1.5"),
    (["--classes", "5", "--target", "9"], "class id 9"),
    (["--classes", "1", "--convention", "non_target"], "at least 2 classes"),
    (["--classes", "0"], "num_classes=0"),
])
def test_explain_bad_input_is_one_line_exit_2(capsys, args, words):
    assert main(["explain", *args]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


def test_console_entry_and_lean_import():
    out = subprocess.run(
        [sys.executable, "-c",
         "import sys, torch; before = set(sys.modules); import labelsmooth;"
         "print(sorted(m for m in set(sys.modules) - before if not m.startswith('labelsmooth')))"],
        capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # nothing beyond torch: no triton, matplotlib, sklearn
    bad = subprocess.run([sys.executable, "-m", "labelsmooth", "explain", "--classes", "x"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid int value" in bad.stderr
