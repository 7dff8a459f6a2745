"""``labelsmooth compare``: end to end on digits / a CSV / an .npz, the JSON schema, every bad input
(exit 2, one line, no traceback, --out not created), the projection, the loss hooks, the summary."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from labelsmooth.cli import main
from labelsmooth.experiments import report
from labelsmooth.experiments.geometry import project_to_template_plane, template_plane
from labelsmooth.experiments.losses import LOSSES, SMOOTHING_FREE, register_loss
from labelsmooth.experiments.models import build_model
from labelsmooth.experiments.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
FILES = ["report.md", "results.json", "reliability.png", "penultimate.png", "confidence.png"]
PER_SEED_KEYS = {"seed", "val_accuracy", *report.METRIC_KEYS}


def _check_outputs(out: Path, runs: list[str], seeds: int) -> dict:
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    for png in FILES[2:]:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "results.json").read_text())
    assert doc["schema"] == "labelsmooth.compare/1"
    assert doc["metrics"] == report.METRIC_KEYS
    assert [r["name"] for r in doc["runs"]] == runs
    for r in doc["runs"]:
        assert len(r["per_seed"]) == seeds
        assert [s["seed"] for s in r["per_seed"]] == list(range(seeds))
        for s in r["per_seed"]:
            assert set(s) == PER_SEED_KEYS
            assert all(math.isfinite(v) for v in s.values())
            assert 0.0 <= s["ece"] <= 1.0 and s["temperature"] > 0
        for key in report.METRIC_KEYS:
            values = [s[key] for s in r["per_seed"]]
            assert r["mean"][key] == pytest.approx(float(np.mean(values)), rel=1e-12, abs=1e-15)
            expected_std = float(np.std(values, ddof=1)) if seeds > 1 else 0.0
            assert r["std"][key] == pytest.approx(expected_std, rel=1e-9, abs=1e-15)
    assert doc["summary"] and all(isinstance(s, str) for s in doc["summary"])
    md = (out / "report.md").read_text()
    assert "| loss | acc % | NLL | ECE % |" in md
    for sentence in doc["summary"]:
        assert sentence in md
    # nothing else was left next to --out (the temporary directory was renamed)
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []
    return doc


def test_quick_on_digits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "digits"
    assert main(["compare", "--quick", "--out", str(out)]) == 0
    doc = _check_outputs(out, ["ce", "ls(0.1)"], seeds=2)
    s = doc["settings"]
    assert (s["dataset"], s["num_classes"], s["num_samples"], s["num_features"]) == ("digits", 10, 1797, 64)
    assert sum(s["split"].values()) == 1797 and s["quick"] is True
    for r in doc["runs"]:
        assert all(seed["accuracy"] > 0.8 for seed in r["per_seed"]), r
    stdout = capsys.readouterr().out
    assert "acc %" in stdout and "ls(0.1)" in stdout and "ECE@T %" in stdout


def _blobs(n_per_class: int, k: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 4
    X = np.concatenate([c + rng.normal(size=(n_per_class, d)) for c in centers])
    y = np.repeat(np.arange(k), n_per_class)
    return X, y


def _write_csv(path: Path, X: np.ndarray, labels: list[str], target: str = "species") -> None:
    header = ["f0", target] + [f"f{i}" for i in range(1, X.shape[1])]
    lines = [",".join(header)]
    for row, lab in zip(X, labels, strict=True):
        cells = [f"{row[0]:.6f}", lab] + [f"{v:.6f}" for v in row[1:]]
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")


def test_csv_with_string_labels_and_a_smoothing_sweep(tmp_path: Path) -> None:
    X, y = _blobs(30, 3, 4, seed=0)
    names = ["setosa", "versicolor", "virginica"]
    data = tmp_path / "flowers.csv"
    _write_csv(data, X, [names[i] for i in y])
    out = tmp_path / "out"
    rc = main(["compare", "--data", str(data), "--target", "species", "--losses", "ce,ls,ls-nt",
               "--smoothing", "0.1,0.2", "--seeds", "1", "--epochs", "5", "--out", str(out)])
    assert rc == 0
    doc = _check_outputs(out, ["ce", "ls(0.1)", "ls(0.2)", "ls-nt(0.1)", "ls-nt(0.2)"], seeds=1)
    s = doc["settings"]
    assert s["class_names"] == names and s["num_features"] == 4 and s["num_samples"] == 90
    assert s["split"] == {"train": 54, "val": 18, "test": 18}


def test_npz_two_classes_and_linear_model(tmp_path: Path) -> None:
    X, y = _blobs(20, 2, 3, seed=1)
    data = tmp_path / "two.npz"
    np.savez(data, X=X, y=y + 5)
    out = tmp_path / "out"
    assert main(["compare", "--data", str(data), "--model", "linear", "--seeds", "2", "--epochs", "3",
                 "--out", str(out)]) == 0
    doc = _check_outputs(out, ["ce", "ls(0.1)"], seeds=2)
    assert doc["settings"]["class_names"] == ["5", "6"] and doc["settings"]["model"] == "linear"


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments, a word the error line must contain)."""
    X, y = _blobs(10, 3, 2, seed=2)
    ok_labels = [str(v) for v in y]
    _write_csv(tmp / "no_target.csv", X, ok_labels, target="label")
    _write_csv(tmp / "single.csv", X, ["a"] * len(y))
    tiny = [0, 10, 20, 1, 11, 21, 2, 12]  # 8 samples of 3 classes < 3 x 3
    _write_csv(tmp / "tiny.csv", X[tiny], [ok_labels[i] for i in tiny])
    rare = [0, 1, 2, 3, 4, 10, 11, 20, 21, 22, 23, 24]  # class '1' has 2 samples
    _write_csv(tmp / "rare.csv", X[rare], [ok_labels[i] for i in rare])
    (tmp / "text.csv").write_text("f0,species,f1\n1.0,a,red\n2.0,b,blue\n")
    (tmp / "nan.csv").write_text("f0,species,f1\n" + "".join(
        f"{i},{'ab'[i % 2]},{'nan' if i == 3 else i}\n" for i in range(12)))
    np.savez(tmp / "no_y.npz", X=X)
    np.savez(tmp / "nan.npz", X=np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X), y=y)
    np.savez(tmp / "nan_y.npz", X=X, y=np.where(np.arange(len(y)) == 4, np.nan, y))
    (tmp / "a_file").write_text("x")
    (tmp / "full").mkdir()
    (tmp / "full" / "keep.txt").write_text("x")
    d = str(tmp)
    return {
        "missing file": (["--data", f"{d}/nope.csv"], "no such file"),
        "no target column": (["--data", f"{d}/no_target.csv", "--target", "species"],
                             "no target column 'species'"),
        "no default target column": (["--data", f"{d}/no_target.csv"], "no --target given"),
        "non-numeric features": (["--data", f"{d}/text.csv", "--target", "species"], "not numeric"),
        "single class": (["--data", f"{d}/single.csv", "--target", "species"], "single class"),
        "nan features csv": (["--data", f"{d}/nan.csv", "--target", "species"], "NaN"),
        "nan features npz": (["--data", f"{d}/nan.npz"], "NaN"),
        "npz without y": (["--data", f"{d}/no_y.npz"], "no array 'y'"),
        "nan labels npz": (["--data", f"{d}/nan_y.npz"], "NaN/infinite label"),
        "too few samples": (["--data", f"{d}/tiny.csv", "--target", "species"], "fewer than 3 x 3"),
        "class too rare": (["--data", f"{d}/rare.csv", "--target", "species"], "only 2 sample"),
        "unwritable out": (["--quick", "--out", f"{d}/a_file/out"], "not writable"),
        "out not empty": (["--quick", "--out", f"{d}/full"], "not empty"),
        "unknown loss": (["--losses", "ce,hinge"], "'hinge' is not known"),
        "bad smoothing": (["--smoothing", "0.1,1.5"], "out of range"),
        "bad smoothing text": (["--smoothing", "abc"], "not a number"),
        "bad seeds": (["--seeds", "0"], "--seeds 0"),
        "infinite lr": (["--lr", "inf"], "--lr inf is not allowed"),
        "bad model": (["--model", "resnet"], "--model 'resnet'"),
        "bad device": (["--device", "tpu"], "--device 'tpu'"),
        "bad dataset": (["--dataset", "mnist"], "--dataset 'mnist'"),
        "data and dataset": (["--data", f"{d}/nan.csv", "--dataset", "wine"], "exclusive"),
        "a directory as data": (["--data", d], "is a directory"),
    }


BAD_NAMES = [
    "missing file", "no target column", "no default target column", "non-numeric features",
    "single class", "nan features csv", "nan features npz", "npz without y", "nan labels npz",
    "too few samples",
    "class too rare", "unwritable out", "out not empty", "unknown loss", "bad smoothing",
    "bad smoothing text", "bad seeds", "infinite lr", "bad model", "bad device", "bad dataset",
    "data and dataset",
    "a directory as data",
]


@pytest.mark.parametrize("case", BAD_NAMES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
        case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args, needle = _bad_inputs(tmp_path)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out"
    if "--out" not in args:
        args = [*args, "--out", str(out)]
    assert main(["compare", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("labelsmooth compare: error: ")
    assert needle in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # --out (or a temp dir) not created
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["keep.txt"]


def test_bad_input_case_list_is_complete(tmp_path: Path) -> None:
    assert sorted(_bad_inputs(tmp_path)) == sorted(BAD_NAMES)


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--seeds", "many"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_failure_during_training_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import labelsmooth.experiments.train as train_mod

    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(train_mod, "train", boom)
    out = tmp_path / "deep" / "er" / "out"
    with pytest.raises(RuntimeError, match="interrupted"):
        main(["compare", "--quick", "--out", str(out)])
    assert list(tmp_path.iterdir()) == []  # neither --out, its temp dir nor the parents made for it


def test_cli_subprocess_and_cheap_import(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-m", "labelsmooth", "compare", "--data",
                           str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "no such file" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()
    # (tqdm is left out: ``import torch`` itself imports it)
    code = ("import sys, labelsmooth.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('sklearn', 'matplotlib', 'scipy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_projection_on_constructed_example() -> None:
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    offset = torch.randn(6, generator=gen, dtype=torch.float64)
    plane = q[:, :2]
    a_templates = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.5, 1.5]], dtype=torch.float64)
    templates = offset + a_templates @ plane.T
    origin, basis = template_plane(templates)
    torch.testing.assert_close(origin, templates.mean(0), rtol=0, atol=1e-14)
    torch.testing.assert_close(basis.T @ basis, torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-14)
    torch.testing.assert_close(basis, plane, rtol=0, atol=1e-14)  # Gram-Schmidt of (t2-t1, t3-t1)
    a = torch.randn(50, 2, generator=gen, dtype=torch.float64)
    off_plane = torch.randn(50, 4, generator=gen, dtype=torch.float64) @ q[:, 2:].T  # dropped
    features = offset + a @ plane.T + off_plane
    coords = project_to_template_plane(features, templates)
    torch.testing.assert_close(coords, a - a_templates.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(project_to_template_plane(templates, templates),
                               a_templates - a_templates.mean(0), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="collinear"):
        template_plane(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]))
    with pytest.raises(ValueError, match=r"shape \(3, D\)"):
        template_plane(torch.zeros(2, 4))


def test_loss_registry_hooks_and_label_argument() -> None:
    calls: dict[str, list] = {"epochs": [], "index": [], "begin": []}

    class Recording:
        needs_index = True

        def __init__(self, eps: float, k: int) -> None:
            self.eps, self.k = eps, k

        def __call__(self, logits, target, *, index):
            calls["index"].append(index.clone())
            return torch.nn.functional.cross_entropy(logits, target)

        def on_train_begin(self, targets) -> None:
            calls["begin"].append(targets.clone())

        def on_epoch_end(self) -> None:
            calls["epochs"].append(len(calls["index"]))

    register_loss("recording", Recording, description="test only")
    try:
        assert "recording" in LOSSES and "recording" not in SMOOTHING_FREE
        loss = LOSSES["recording"](0.1, 3)
        X = torch.randn(10, 4)
        y = torch.tensor([0, 1, 2] * 3 + [0])
        model = build_model("linear", 4, 3)
        train(model, loss, X, y, TrainConfig(epochs=3, batch_size=4), seed=0)
    finally:
        LOSSES.pop("recording")
    assert len(calls["begin"]) == 1 and calls["begin"][0].tolist() == y.tolist()
    assert calls["epochs"] == [3, 6, 9]  # 3 batches per epoch, hook after each epoch
    for e in range(3):
        seen = torch.cat(calls["index"][3 * e:3 * e + 3])
        assert sorted(seen.tolist()) == list(range(10))  # every training row once per epoch


def test_ce_ignores_smoothing_and_ls_calls_labelsmooth() -> None:
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1, 2, 3, 0])
    assert "ce" in SMOOTHING_FREE
    torch.testing.assert_close(LOSSES["ce"](0.3, 4)(logits, target),
                               torch.nn.functional.cross_entropy(logits, target))
    torch.testing.assert_close(LOSSES["ls"](0.3, 4)(logits, target),
                               torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.3))
    torch.testing.assert_close(LOSSES["ls-nt"](0.3, 4)(logits, target),
                               torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.4))


def test_optimal_logit_gap_is_the_smoothed_minimiser() -> None:
    k, eps = 10, 0.1
    g = report.optimal_logit_gap("ls", eps, k)
    z = torch.zeros(1, k, dtype=torch.float64)
    z[0, 0] = g
    q = torch.full((1, k), eps / k, dtype=torch.float64)
    q[0, 0] += 1 - eps
    torch.testing.assert_close(z.softmax(1), q, rtol=0, atol=1e-15)  # gradient softmax - q = 0
    assert report.optimal_logit_gap("ls-nt", 0.09, k) == pytest.approx(report.optimal_logit_gap("ls", 0.1, k))
    assert report.optimal_logit_gap("ce", None, k) is None


def _run(name: str, loss: str, eps: float | None, **means: float) -> report.RunResult:
    r = report.RunResult(name, loss, eps)
    for seed, d in enumerate((-1.0, 1.0)):
        row = {k: 0.0 for k in report.METRIC_KEYS}
        row.update({k: v + d * 1e-3 for k, v in means.items()})
        row["seed"] = seed
        r.per_seed.append(row)
    return r


def test_summary_sentences_follow_the_numbers() -> None:
    ce = _run("ce", "ce", None, accuracy=0.960, gap=0.02, ece=0.02, nll=0.15, nll_ts=0.12,
              ece_ts=0.01, temperature=1.4, logit_gap=15.0)
    ls = _run("ls(0.1)", "ls", 0.1, accuracy=0.973, gap=-0.12, ece=0.12, nll=0.2, nll_ts=0.10,
              ece_ts=0.008, temperature=0.5, logit_gap=4.4)
    text = report.summary([ce, ls], 10)
    assert text[0].startswith("ce is over-confident (mean confidence 2.0 points above accuracy)")
    assert "ls(0.1) raised test accuracy by 1.3 points and is under-confident" in text[1]
    assert "the smoothed loss is minimised at 4.51" in text[2]
    assert "lowest NLL is ce's (0.150)" in text[3] and "lowest NLL is ls(0.1)'s (0.100)" in text[3]
    assert text[3].endswith("ECE after scaling: ce 1.0%, ls(0.1) 0.8%.")
    table = report.text_table([ce, ls], pm="+-")
    assert "97.3 +- 0.1" in table and "-12.0 +- 0.1" in table
