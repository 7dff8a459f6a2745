"""``labelsmooth compare``: the variant losses, ``--noise`` and ``--distill``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from labelsmooth.cli import main
from labelsmooth.experiments import distill, report
from labelsmooth.experiments.data import split
from labelsmooth.experiments.losses import LOSSES, SMOOTHING_FREE, make_loss, variant_default
from labelsmooth.experiments.noise import NOISE_SEED_OFFSET, check_noise, flip_labels

VARIANT_NAMES = ["online", "confidence_penalty", "label_relaxation", "focal", "poly", "prior"]


def _blobs_npz(path: Path, n_per_class: int = 30, k: int = 3, d: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 4
    X = np.concatenate([c + rng.normal(size=(n_per_class, d)) for c in centers])
    np.savez(path, X=X, y=np.repeat(np.arange(k), n_per_class))
    return path


def _oracle_ce(logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """float64 mean of -sum_c q_c log softmax(z)_c."""
    z = logits.double()
    return -(q.double() * (z - torch.logsumexp(z, dim=1, keepdim=True))).sum(1).mean()


# ---- the registry -------------------------------------------------------------------------------


def test_every_variant_is_a_losses_name_that_uses_smoothing() -> None:
    for name in VARIANT_NAMES:
        assert name in LOSSES and name not in SMOOTHING_FREE


def test_variant_losses_compute_the_documented_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    k, eps = 4, 0.2
    logits = torch.randn(6, k, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 0, 0])
    onehot = torch.nn.functional.one_hot(target, k).double()
    q_uniform = (1 - eps) * onehot + eps / k
    p = torch.softmax(logits.detach(), 1)

    # prior: smoothing toward the label frequencies of the labels passed to on_train_begin
    prior_loss = make_loss("prior", eps, k)
    train_labels = torch.tensor([0, 0, 0, 1, 2, 2, 3, 0])
    prior_loss.on_train_begin(train_labels)
    freq = torch.tensor([4, 1, 2, 1], dtype=torch.float64) / 8
    got = prior_loss(logits, target)
    want = _oracle_ce(logits, (1 - eps) * onehot + eps * freq)
    torch.testing.assert_close(got, want)
    g_got, = torch.autograd.grad(got, logits)
    g_want = (p - ((1 - eps) * onehot + eps * freq)) / len(target)
    torch.testing.assert_close(g_got, g_want)

    # confidence penalty: CE(z, q) - beta H(p), beta from the command line
    cp = make_loss("confidence_penalty", eps, k, beta=0.3)
    cp.on_train_begin(target)
    entropy = -(p * p.log()).sum(1).mean()
    torch.testing.assert_close(cp(logits, target), _oracle_ce(logits, q_uniform) - 0.3 * entropy)

    # poly: CE(z, q) + eps1 (1 - p_t), p_t = sum_c q_c p_c
    poly = make_loss("poly", eps, k, epsilon1=0.5)
    pt = (q_uniform * p).sum(1)
    torch.testing.assert_close(poly(logits, target),
                               _oracle_ce(logits, q_uniform) + 0.5 * (1 - pt).mean())

    # focal: -sum_c q_c (1 - p_c)^gamma log p_c
    focal = make_loss("focal", eps, k, gamma=1.5)
    logp = torch.log_softmax(logits.detach(), 1)
    torch.testing.assert_close(focal(logits, target),
                               -(q_uniform * (1 - p) ** 1.5 * logp).sum(1).mean())

    # label relaxation: alpha = the smoothing value
    lr = make_loss("label_relaxation", eps, k)
    py = p.gather(1, target[:, None]).squeeze(1)
    kl = torch.where(py >= 1 - eps, torch.zeros_like(py),
                     (1 - eps) * torch.log((1 - eps) / py) + eps * torch.log(eps / (1 - py)))
    torch.testing.assert_close(lr(logits, target), kl.mean())


def test_online_starts_fresh_after_the_check_call_and_follows_epochs() -> None:
    k = 3
    loss = make_loss("online", 0.1, k, alpha=0.7)  # make_loss calls it once on a dummy batch
    assert float(loss.module.running_count.sum()) == 2.0  # ... which was accumulated
    loss.on_train_begin(torch.tensor([0, 1, 2]))
    mod = loss.module
    assert float(mod.running_count.sum()) == 0.0 and int(mod.epochs_completed) == 0
    assert mod.alpha == 0.7 and mod.label_smoothing == 0.1
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([0, 1, 2])  # the last one is misclassified: not counted
    q0 = 0.9 * torch.nn.functional.one_hot(target, k).double() + 0.1 / k
    torch.testing.assert_close(loss(logits, target), _oracle_ce(logits, q0))
    loss.on_epoch_end()
    p = torch.softmax(logits, 1)
    soft = q0[[0, 1, 2]].clone()  # S^(0) rows = uniform smoothing
    soft[0], soft[1] = p[0], p[1]  # class 2 had no correct row: keeps its row
    torch.testing.assert_close(mod.soft_targets, soft)
    q1 = 0.7 * torch.nn.functional.one_hot(target, k).double() + 0.3 * soft[target]
    torch.testing.assert_close(loss(logits, target), _oracle_ce(logits, q1))


def test_variant_defaults_come_from_the_variants_module() -> None:
    assert variant_default("focal", "gamma") == 2.0
    assert variant_default("confidence_penalty", "beta") == 0.1
    assert variant_default("online", "alpha") == 0.5
    assert variant_default("poly", "epsilon1") == 1.0


# ---- end to end ---------------------------------------------------------------------------------


def test_every_variant_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _blobs_npz(tmp_path / "blobs.npz")
    out = tmp_path / "out"
    names = ["ce", *VARIANT_NAMES]
    assert main(["compare", "--data", str(data), "--losses", ",".join(names), "--seeds", "1",
                 "--epochs", "6", "--gamma", "1", "--beta", "0.2", "--online-alpha", "0.6",
                 "--poly-epsilon", "-0.5", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    runs = ["ce"] + [f"{n}(0.1)" for n in VARIANT_NAMES]
    assert [r["name"] for r in doc["runs"]] == runs
    for r in doc["runs"]:
        seed = r["per_seed"][0]
        assert all(math.isfinite(v) for v in seed.values())
        assert seed["accuracy"] > 0.9, r  # well separated blobs
    params = doc["settings"]["variant_params"]
    assert params["focal"] == {"gamma": 1.0} and params["confidence_penalty"] == {"beta": 0.2}
    assert params["online"] == {"alpha": 0.6} and params["poly"] == {"epsilon1": -0.5}
    assert set(params) == set(VARIANT_NAMES)
    assert doc["settings"]["label_noise"] == 0.0 and doc["settings"]["distill"] is None
    assert "distillation" not in doc
    stdout = capsys.readouterr().out
    for name in runs:
        assert name in stdout
    assert "label noise" not in stdout and "Label noise" not in (out / "report.md").read_text()


# ---- label noise --------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k", "noise"), [(1079, 10, 0.2), (54, 3, 0.25), (7, 2, 0.5),
                                                (100, 4, 0.0), (10, 5, 0.99)])
def test_flip_labels_flips_exactly_round_noise_n_to_other_classes(n: int, k: int, noise: float
                                                                   ) -> None:
    labels = torch.arange(n) % k
    before = labels.clone()
    noisy, mask = flip_labels(labels, noise, k, seed=3)
    assert torch.equal(labels, before)  # not modified in place
    assert int(mask.sum()) == round(noise * n)
    assert torch.equal(noisy != labels, mask)  # every flipped label changed, nothing else did
    assert int(noisy.min()) >= 0 and int(noisy.max()) < k
    again, _ = flip_labels(labels, noise, k, seed=3)
    assert torch.equal(noisy, again)


def test_flip_labels_is_seeded_and_uniform_over_the_other_classes() -> None:
    labels = torch.zeros(60000, dtype=torch.long)
    noisy, mask = flip_labels(labels, 0.5, 4, seed=0)
    counts = torch.bincount(noisy[mask], minlength=4).tolist()
    assert counts[0] == 0 and sum(counts) == 30000
    for c in counts[1:]:  # 10000 each; binomial sd ~ 82
        assert abs(c - 10000) < 500, counts
    other, _ = flip_labels(labels, 0.5, 4, seed=1)
    assert not torch.equal(noisy, other)
    gen = torch.Generator().manual_seed(0 + NOISE_SEED_OFFSET)  # the documented stream
    assert torch.equal(torch.nonzero(mask).squeeze(1).sort().values,
                       torch.randperm(60000, generator=gen)[:30000].sort().values)


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan"), 1.5])
def test_check_noise_rejects_out_of_range(bad: float) -> None:
    with pytest.raises(ValueError, match="--noise"):
        check_noise(bad)


def test_noise_flips_training_labels_only_and_is_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import labelsmooth.experiments.train as train_mod
    from labelsmooth import metrics

    data = _blobs_npz(tmp_path / "blobs.npz")
    seen: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}
    real_train, real_fit, real_nll = train_mod.train, metrics.fit_temperature, metrics.nll

    def rec_train(model, loss_fn, X, y, cfg, **kw):
        seen["train"].append(y.clone())
        return real_train(model, loss_fn, X, y, cfg, **kw)

    def rec_fit(logits, y, *a, **kw):
        seen["val"].append(y.clone())
        return real_fit(logits, y, *a, **kw)

    def rec_nll(logits, y, *a, **kw):
        seen["test"].append(y.clone())
        return real_nll(logits, y, *a, **kw)

    monkeypatch.setattr(train_mod, "train", rec_train)
    monkeypatch.setattr(metrics, "fit_temperature", rec_fit)
    monkeypatch.setattr(metrics, "nll", rec_nll)
    out = tmp_path / "out"
    assert main(["compare", "--data", str(data), "--losses", "ce,ls,prior", "--noise", "0.2",
                 "--seeds", "2", "--epochs", "2", "--out", str(out)]) == 0
    from labelsmooth.experiments.data import load_file

    splits = [split(load_file(str(data)), seed) for seed in range(2)]
    n_train = len(splits[0].y_train)
    assert len(seen["train"]) == 6  # 3 losses x 2 seeds, loss-major
    for i, y in enumerate(seen["train"]):
        clean = splits[i % 2].y_train
        assert int((y != clean).sum()) == round(0.2 * n_train)
        assert torch.equal(y, seen["train"][i % 2])  # same noisy labels for every loss of a seed
    assert not torch.equal(seen["train"][0], seen["train"][1])
    for i, y in enumerate(seen["val"]):
        assert torch.equal(y, splits[i % 2].y_val)
    for y in seen["test"]:
        assert any(torch.equal(y, s.y_test) for s in splits)
    doc = json.loads((out / "results.json").read_text())
    assert doc["settings"]["label_noise"] == 0.2
    assert doc["settings"]["flipped_train_labels"] == [round(0.2 * n_train)] * 2
    md = (out / "report.md").read_text()
    assert "**Label noise:** 0.2 of the training labels" in md
    assert f"({round(0.2 * n_train)} of {n_train} per seed)" in md


# ---- distillation -------------------------------------------------------------------------------


@pytest.mark.parametrize(("temperature", "weight"), [(4.0, 1.0), (2.0, 0.3), (1.0, 0.0)])
def test_distillation_loss_matches_a_float64_oracle(temperature: float, weight: float) -> None:
    gen = torch.Generator().manual_seed(1)
    teacher = torch.randn(8, 5, generator=gen, dtype=torch.float64) * 3
    student = torch.randn(3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([6, 0, 3])
    target = torch.tensor([1, 4, 0])
    loss_fn = distill.DistillationLoss(teacher, temperature, weight)
    assert loss_fn.needs_index
    loss_fn.on_train_begin(target)
    got = loss_fn(student, target, index=index)
    soft = torch.softmax(teacher[index] / temperature, 1)
    onehot = torch.nn.functional.one_hot(target, 5).double()
    want = (weight * temperature ** 2 * _oracle_ce(student / temperature, soft)
            + (1 - weight) * _oracle_ce(student, onehot))
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    g_got, = torch.autograd.grad(got, student)
    p_t = torch.softmax(student.detach() / temperature, 1)
    p = torch.softmax(student.detach(), 1)
    g_want = (weight * temperature * (p_t - soft) + (1 - weight) * (p - onehot)) / 3
    torch.testing.assert_close(g_got.double(), g_want, rtol=1e-5, atol=1e-6)


def _result(name: str, accs: list[float]) -> report.RunResult:
    r = report.RunResult(name, name, None)
    r.per_seed = [{"accuracy": a} for a in accs]
    return r


@pytest.mark.parametrize(("ls_accs", "phrase"), [
    ([0.80, 0.81, 0.79], "made a worse teacher"),
    ([0.90, 0.91, 0.905], "did not make a worse teacher"),
    ([0.899, 0.88, 0.91], "not clearly a worse teacher"),
])
def test_distillation_verdict_follows_the_numbers(ls_accs: list[float], phrase: str) -> None:
    students = [distill.Student(_result("s<-labels", [0.85, 0.86, 0.84]), None),
                distill.Student(_result("s<-ce", [0.89, 0.90, 0.895]), "ce"),
                distill.Student(_result("s<-ls(0.1)", ls_accs), "ls(0.1)")]
    teachers = {"ce": _result("ce", [0.95, 0.96, 0.955]), "ls(0.1)": _result("ls", [0.97] * 3)}
    text = distill.verdict(students, teachers)
    assert phrase in text
    assert "more accurate than the ce teacher" in text and "hard labels alone reached 85.0%" in text


def test_distill_end_to_end_on_digits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["compare", "--losses", "poly", "--distill", "--seeds", "2", "--epochs", "6",
                 "--lr", "0.01",
                 "--distill-temperature", "3", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    # the two teachers are added in front of --losses
    assert [r["name"] for r in doc["runs"]] == ["ce", "ls(0.1)", "poly(0.1)"]
    assert doc["settings"]["distill"] == {"student_model": "linear", "temperature": 3.0,
                                          "weight": 1.0, "teachers": ["ce", "ls(0.1)"]}
    dist = doc["distillation"]
    assert dist["settings"] == doc["settings"]["distill"]
    students = dist["students"]
    assert [s["name"] for s in students] == ["linear<-labels", "linear<-ce", "linear<-ls(0.1)"]
    assert [s["teacher"] for s in students] == [None, "ce", "ls(0.1)"]
    for s in students:
        accs = [row["accuracy"] for row in s["per_seed"]]
        assert len(accs) == 2 and all(0.8 < a <= 1.0 for a in accs), s
        assert s["mean"]["accuracy"] == pytest.approx(np.mean(accs), rel=1e-12)
        assert s["std"]["accuracy"] == pytest.approx(np.std(accs, ddof=1), rel=1e-9, abs=1e-15)
    assert dist["summary"].startswith("The smoothed teacher ls(0.1) was ")
    md = (out / "report.md").read_text()
    assert "## Distillation (Müller, Kornblith & Hinton 2019)" in md
    assert "| student | taught by | teacher acc % | student acc % |" in md
    assert dist["summary"] in md
    stdout = capsys.readouterr().out
    assert "distillation: student linear, T = 3" in stdout
    assert "linear<-ls(0.1)" in stdout and "student acc %" in stdout


# ---- bad input ----------------------------------------------------------------------------------

BAD = {
    "negative gamma": (["--losses", "ce,focal", "--gamma", "-1"], "--gamma -1: gamma=-1.0"),
    "negative beta": (["--losses", "confidence_penalty", "--beta", "-0.5"], "--beta -0.5"),
    "online alpha > 1": (["--losses", "online", "--online-alpha", "1.5"], "--online-alpha 1.5"),
    "poly epsilon nan": (["--losses", "poly", "--poly-epsilon", "nan"], "--poly-epsilon nan"),
    "option without its loss": (["--losses", "ce,ls", "--gamma", "1"], "not in --losses"),
    "relaxation alpha 1": (["--losses", "label_relaxation", "--smoothing", "1"], "alpha=1.0"),
    "noise 1": (["--noise", "1"], "--noise 1.0 is out of range"),
    "noise negative": (["--noise", "-0.1"], "--noise -0.1"),
    "noise nan": (["--noise", "nan"], "--noise nan"),
    "temperature 0": (["--distill", "--distill-temperature", "0"], "--distill-temperature 0"),
    "weight > 1": (["--distill", "--distill-weight", "1.5"], "--distill-weight 1.5"),
    "unknown student": (["--distill", "--student", "resnet"], "--student 'resnet'"),
    "distill without smoothing": (["--distill", "--smoothing", "0"], "smoothed teacher"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_values_exit_2_with_one_line_and_no_output(
        case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args, needle = BAD[case]
    out = tmp_path / "sub" / "out"
    assert main(["compare", *args, "--quick", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("labelsmooth compare: error: ")
    assert needle in lines[0], lines[0]
    assert captured.out == "" and "Traceback" not in captured.err
    assert list(tmp_path.iterdir()) == []
