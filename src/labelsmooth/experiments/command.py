"""``labelsmooth compare``: train a classifier with and without label smoothing and report what changes.

This module's body imports only argparse and stdlib; numpy, scikit-learn, matplotlib and tqdm are
imported inside :func:`run`. Every input check (arguments, data, ``--out``) runs before anything is
written; outputs go to a temporary directory beside ``--out`` that is renamed into place at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Any

DEFAULT_LOSSES = "ce,ls"
QUICK = {"seeds": 2, "epochs": 12}
FULL = {"seeds": 5, "epochs": 60}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("data")
    src.add_argument("--dataset", default=None,
                     help="built-in data set (no download): digits (default), breast_cancer, wine")
    src.add_argument("--data", metavar="FILE", default=None,
                     help="your own data: a CSV with a label column (--target) and numeric features, "
                          "or an .npz with arrays X (samples x features) and y")
    src.add_argument("--target", metavar="COL", default=None,
                     help="label column of the CSV (default: the column named 'target')")
    exp = parser.add_argument_group("experiment")
    exp.add_argument("--losses", default=DEFAULT_LOSSES,
                     help="comma list of losses: ce (no smoothing), ls (uniform), ls-nt (non_target)"
                          f" (default: {DEFAULT_LOSSES})")
    exp.add_argument("--smoothing", default="0.1",
                     help="label_smoothing eps; a comma list sweeps it (default: 0.1)")
    exp.add_argument("--seeds", type=int, default=None,
                     help=f"number of seeds (default {FULL['seeds']}; --quick: {QUICK['seeds']})")
    exp.add_argument("--epochs", type=int, default=None,
                     help=f"training epochs (default {FULL['epochs']}; --quick: {QUICK['epochs']})")
    exp.add_argument("--model", default="mlp", help="mlp (default: 2 hidden ReLU layers) or linear")
    exp.add_argument("--batch-size", type=int, default=None,
                     help="mini-batch size (default: min(128, max(16, train size // 8)), so small "
                          "data sets still get about 8 steps per epoch)")
    exp.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (default 2e-3)")
    exp.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    exp.add_argument("--threads", type=int, default=None,
                     help="CPU threads for torch (default 1: these small models run fastest on one)")
    exp.add_argument("--quick", action="store_true",
                     help=f"a tiny run: {QUICK['seeds']} seeds, {QUICK['epochs']} epochs")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output directory (default: runs/compare-<timestamp>); must not exist "
                             "or be empty")


def _positive_int(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"{name} {value} is not allowed; allowed: an integer >= 1")
    return value


def _parse_smoothing(text: str) -> list[float]:
    import math

    values: list[float] = []
    for part in text.split(","):
        try:
            v = float(part.strip())
        except ValueError:
            raise ValueError(f"--smoothing {text!r}: {part.strip()!r} is not a number; allowed: "
                             f"floats in [0, 1], comma separated") from None
        if math.isnan(v) or not 0.0 <= v <= 1.0:
            raise ValueError(f"--smoothing {part.strip()} is out of range; allowed: [0, 1]")
        if v not in values:
            values.append(v)
    return values


def _parse_losses(text: str) -> list[str]:
    from .losses import LOSSES

    names: list[str] = []
    for part in text.split(","):
        name = part.strip()
        if name not in LOSSES:
            raise ValueError(f"--losses: {name!r} is not known; allowed: {', '.join(LOSSES)}")
        if name not in names:
            names.append(name)
    return names


def _check_device(device: str) -> str:
    import torch

    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine; use cpu")
        return device
    raise ValueError(f"--device {device!r} is not known; allowed: cpu, cuda")


def _prepare_out(out: str) -> tuple[str, str, list[str]]:
    """Check ``--out`` and make a temporary directory beside it.

    Returns ``(final path, temporary path, parent directories created)``. ``--out`` must not exist, or
    be an empty directory; its parent is created if missing.
    """
    import tempfile

    final = os.path.abspath(out)
    if os.path.exists(final):
        if not os.path.isdir(final):
            raise ValueError(f"--out {out!r} exists and is not a directory")
        if os.listdir(final):
            raise ValueError(f"--out {out!r} already exists and is not empty; choose a new directory")
    parent = os.path.dirname(final)
    created: list[str] = []
    probe = parent
    while not os.path.exists(probe):
        created.append(probe)
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"--out {out!r} is not writable: {probe!r} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out!r} is not writable: no write permission in {probe!r}")
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.tmp-", dir=parent)
    except OSError as exc:
        _remove_empty(created)
        raise ValueError(f"--out {out!r} is not writable: {exc.strerror or exc}") from None
    return final, tmp, created


def _remove_empty(dirs: list[str]) -> None:
    for d in dirs:  # deepest first
        with contextlib.suppress(OSError):
            os.rmdir(d)


def _resolve_data(args: argparse.Namespace) -> Any:
    from . import data as data_mod

    if args.data is not None:
        if args.dataset is not None:
            raise ValueError("--data and --dataset are exclusive; give one of them")
        return data_mod.load_file(args.data, args.target)
    if args.target is not None:
        raise ValueError("--target names a column of a --data CSV file; it needs --data")
    return data_mod.load_builtin(args.dataset or "digits")


def run(args: argparse.Namespace) -> int:
    import torch

    from .losses import SMOOTHING_FREE, make_loss, run_name
    from .models import MODELS

    wall_start = time.perf_counter()
    # ---- every check before anything is written -------------------------------------------------
    losses = _parse_losses(args.losses)
    smoothing = _parse_smoothing(args.smoothing)
    preset = QUICK if args.quick else FULL
    seeds = _positive_int("--seeds", args.seeds if args.seeds is not None else preset["seeds"])
    epochs = _positive_int("--epochs", args.epochs if args.epochs is not None else preset["epochs"])
    if args.batch_size is not None:
        _positive_int("--batch-size", args.batch_size)
    if not args.lr > 0:
        raise ValueError(f"--lr {args.lr} is not allowed; allowed: a float > 0")
    if args.model not in MODELS:
        raise ValueError(f"--model {args.model!r} is not known; allowed: {', '.join(MODELS)}")
    device = _check_device(args.device)
    threads = args.threads if args.threads is not None else 1
    threads = _positive_int("--threads", threads)
    dataset = _resolve_data(args)
    plan: list[tuple[str, str, float | None]] = []  # (run name, loss name, smoothing or None)
    for name in losses:
        for eps in ([None] if name in SMOOTHING_FREE else smoothing):
            make_loss(name, 0.0 if eps is None else eps, dataset.num_classes)  # fails early
            plan.append((run_name(name, eps or 0.0), name, eps))
    out = args.out or os.path.join("runs", time.strftime("compare-%Y%m%d-%H%M%S"))
    final, tmp, created = _prepare_out(out)

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _experiment(args, dataset, plan, seeds, epochs, device, threads, tmp, wall_start, final)
        if os.path.isdir(final):
            os.rmdir(final)  # checked empty above
        os.rename(tmp, final)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise
    finally:
        torch.set_num_threads(old_threads)
    print(f"wrote {out}{os.sep}: report.md results.json reliability.png penultimate.png "
          f"confidence.png")
    return 0


def _experiment(args: argparse.Namespace, dataset: Any, plan: list[tuple[str, str, float | None]],
                seeds: int, epochs: int, device: str, threads: int, tmp: str,
                wall_start: float, final: str) -> None:
    import torch
    from tqdm import tqdm

    from .. import metrics
    from . import figures, report
    from .data import split
    from .losses import make_loss
    from .models import build_model
    from .train import TrainConfig, penultimate, predict, train

    splits = [split(dataset, seed) for seed in range(seeds)]
    n_train = len(splits[0].y_train)
    batch_size = args.batch_size or min(128, max(16, n_train // 8))
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=args.lr, device=device)
    results: list[report.RunResult] = []
    artifacts: list[figures.RunArtifacts] = []
    for name, loss_name, eps in plan:
        result = report.RunResult(name, loss_name, eps)
        test_logits, test_targets, temps = [], [], []
        feats: dict[str, torch.Tensor] = {}
        for seed in range(seeds):
            data = splits[seed]
            torch.manual_seed(seed)
            model = build_model(args.model, data.X_train.shape[1], dataset.num_classes)
            loss_fn = make_loss(loss_name, 0.0 if eps is None else eps, dataset.num_classes)
            y_train = data.y_train  # the labels trained on (a noise option would flip them here)
            bar = tqdm(total=epochs, desc=f"{name:>10} seed {seed}", file=sys.stderr, leave=True,
                       unit="ep", dynamic_ncols=True, mininterval=0.25)

            def on_epoch(epoch: int, mean_loss: float, bar: Any = bar) -> None:
                bar.update(1)
                bar.set_postfix(loss=f"{mean_loss:.3f}", refresh=False)

            try:
                seconds = train(model, loss_fn, data.X_train, y_train, cfg, seed=seed,
                                on_epoch=on_epoch)
                val = predict(model, data.X_val, device)
                test = predict(model, data.X_test, device)
                t = metrics.fit_temperature(val, data.y_val)
                row = {
                    "seed": seed,
                    "accuracy": float((test.argmax(1) == data.y_test).double().mean()),
                    "val_accuracy": float((val.argmax(1) == data.y_val).double().mean()),
                    "nll": metrics.nll(test, data.y_test),
                    "ece": metrics.expected_calibration_error(test, data.y_test),
                    "gap": metrics.confidence_gap(test, data.y_test),
                    "nll_ts": metrics.nll(test, data.y_test, t),
                    "ece_ts": metrics.expected_calibration_error(test / t, data.y_test),
                    "temperature": t,
                    "logit_gap": metrics.logit_gap(test),
                    "train_time_s": seconds,
                }
                bar.set_postfix(test_acc=f"{row['accuracy']:.3f}", ece=f"{row['ece']:.3f}")
            finally:
                bar.close()
            result.per_seed.append(row)
            test_logits.append(test)
            test_targets.append(data.y_test)
            temps.append(t)
            if seed == 0:
                feats = {"train": penultimate(model, data.X_train, device),
                         "test": penultimate(model, data.X_test, device),
                         "templates": model.head.weight.detach().float().cpu()}
        results.append(result)
        artifacts.append(figures.RunArtifacts(
            name, test_logits, test_targets, temps, feats["train"], splits[0].y_train,
            feats["test"], feats["templates"]))

    sizes = splits[0].sizes()
    settings = {
        "dataset": dataset.name, "num_classes": dataset.num_classes,
        "class_names": dataset.class_names, "num_samples": len(dataset.y),
        "num_features": int(dataset.X.shape[1]), "split": sizes, "model": args.model,
        "losses": [p[1] for p in plan], "runs": [p[0] for p in plan],
        "smoothing": sorted({p[2] for p in plan if p[2] is not None}), "seeds": seeds,
        "epochs": epochs, "batch_size": batch_size, "lr": args.lr,
        "weight_decay": cfg.weight_decay, "device": device, "threads": threads,
        "quick": bool(args.quick), "torch": torch.__version__, "out": final,
    }
    sentences = report.summary(results, dataset.num_classes)
    figures.write_all(artifacts, dataset.class_names, tmp)
    wall = time.perf_counter() - wall_start
    with open(os.path.join(tmp, "results.json"), "w", encoding="utf-8") as fh:
        fh.write(report.results_json(results, settings, sentences, wall))
    with open(os.path.join(tmp, "report.md"), "w", encoding="utf-8") as fh:
        fh.write(report.markdown_report(results, settings, sentences, wall))
    pm = "±" if _can_encode(sys.stdout, "±") else "+-"
    print()
    print(f"{dataset.name}: {dataset.num_classes} classes, train/val/test "
          f"{sizes['train']}/{sizes['val']}/{sizes['test']}, model {args.model}, {epochs} epochs, "
          f"mean {pm} std over {seeds} seed(s)")
    print(report.text_table(results, pm))
    print()
    for sentence in sentences:
        print(f"* {sentence}" if _can_encode(sys.stdout, sentence) else
              f"* {sentence.encode('ascii', 'replace').decode()}")
    print(f"total wall time {wall:.1f} s")


def _can_encode(stream: Any, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True
