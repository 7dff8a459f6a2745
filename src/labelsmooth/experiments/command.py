"""``labelsmooth compare``: train a classifier with and without label smoothing and report what changes.

This module's body imports only argparse and stdlib; numpy, scikit-learn, matplotlib and tqdm are
imported inside :func:`run`. Every input check (arguments, data, ``--out``) runs before anything is
written; outputs go to a temporary directory beside ``--out`` that is renamed into place at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from typing import Any

from . import worker

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
                     help="comma list of losses: ce (no smoothing), ls (uniform), ls-nt (non_target), "
                          "and the variants online, confidence_penalty, label_relaxation, focal, "
                          f"poly, prior (see docs/variants.md) (default: {DEFAULT_LOSSES})")
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
    exp.add_argument("--noise", type=float, default=0.0,
                     help="flip this fraction of the TRAINING labels to a different class chosen "
                          "uniformly (seeded per seed); validation and test labels stay clean "
                          "(default 0, allowed [0, 1))")
    var = parser.add_argument_group("variant parameters (defaults from labelsmooth.variants)")
    from .losses import VARIANT_OPTIONS, variant_default

    for dest, (variant, param, meaning) in VARIANT_OPTIONS.items():
        var.add_argument("--" + dest.replace("_", "-"), dest=dest, type=float, default=None,
                         help=f"{variant}: {param}, {meaning} "
                              f"(default {variant_default(variant, param)})")
    dis = parser.add_argument_group("distillation (Müller et al. 2019)")
    dis.add_argument("--distill", action="store_true",
                     help="also distil a student from a ce teacher and from an ls teacher (eps = the "
                          "first --smoothing value; both are added to --losses if missing), plus a "
                          "student on hard labels alone; reports the students' test accuracy")
    dis.add_argument("--distill-temperature", type=float, default=4.0,
                     help="distillation temperature T > 0 (default 4)")
    dis.add_argument("--distill-weight", type=float, default=1.0,
                     help="weight w of the soft-target term, in [0, 1]; 1 - w goes to the hard-label "
                          "CE (default 1: soft targets only)")
    dis.add_argument("--student", default="linear",
                     help="student model: linear (default: softmax regression) or mlp")
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


def _load_data(data: str | None, dataset: str | None, target: str | None, seeds: int
               ) -> tuple[Any, list[Any]]:
    """The checked data set and its split for every seed (picklable: it may run in the worker)."""
    from .data import split

    loaded = _resolve_data(argparse.Namespace(data=data, dataset=dataset, target=target))
    return loaded, [split(loaded, seed) for seed in range(seeds)]


def _variant_params(args: argparse.Namespace, losses: list[str]) -> dict[str, dict[str, float]]:
    """``{variant: {param: value}}`` from ``--online-alpha`` etc., each checked by the variants
    module (a ValueError becomes one line naming the option); an option for a variant that is not in
    ``--losses`` is an error rather than silently ignored."""
    from .. import variants
    from .losses import VARIANT_OPTIONS

    params: dict[str, dict[str, float]] = {}
    for dest, (variant, param, _) in VARIANT_OPTIONS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        option = "--" + dest.replace("_", "-")
        if variant not in losses:
            raise ValueError(f"{option} is a parameter of the {variant!r} loss, which is not in "
                             f"--losses {','.join(losses)}; add {variant} or drop {option}")
        try:
            variants.VARIANTS[variant](2, 0.0, **{param: value})
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{option} {value:g}: {exc}") from None
        params.setdefault(variant, {})[param] = value
    return params


def _effective_params(losses: list[str], params: dict[str, dict[str, float]]
                      ) -> dict[str, dict[str, Any]]:
    """The variant parameters used, given or default, for results.json."""
    from .losses import VARIANT_OPTIONS, variant_default

    out: dict[str, dict[str, Any]] = {}
    for variant, param, _ in VARIANT_OPTIONS.values():
        if variant in losses:
            out.setdefault(variant, {})[param] = params.get(variant, {}).get(
                param, variant_default(variant, param))
    if "label_relaxation" in losses:
        out["label_relaxation"] = {"alpha": "the --smoothing value"}
    if "prior" in losses:
        out["prior"] = {"prior": "class frequencies of the training labels (noisy ones under "
                                 "--noise)"}
    return out


def run(args: argparse.Namespace) -> int:
    from . import distill
    from .losses import run_name
    from .models import MODELS
    from .noise import check_noise

    wall_start = time.perf_counter()
    # ---- every check before anything is written -------------------------------------------------
    losses = _parse_losses(args.losses)
    smoothing = _parse_smoothing(args.smoothing)
    preset = QUICK if args.quick else FULL
    seeds = _positive_int("--seeds", args.seeds if args.seeds is not None else preset["seeds"])
    epochs = _positive_int("--epochs", args.epochs if args.epochs is not None else preset["epochs"])
    if args.batch_size is not None:
        _positive_int("--batch-size", args.batch_size)
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise ValueError(f"--lr {args.lr} is not allowed; allowed: a finite float > 0")
    if args.model not in MODELS:
        raise ValueError(f"--model {args.model!r} is not known; allowed: {', '.join(MODELS)}")
    noise = check_noise(args.noise)
    params = _variant_params(args, losses)
    distill_cfg: dict[str, Any] | None = None
    if args.distill:
        if args.student not in MODELS:
            raise ValueError(f"--student {args.student!r} is not known; allowed: {', '.join(MODELS)}")
        if smoothing[0] <= 0.0:
            raise ValueError(f"--distill needs a smoothed teacher: the first --smoothing value is "
                             f"{smoothing[0]:g}; allowed: > 0")
        distill_cfg = {
            "student_model": args.student,
            "temperature": distill.check_temperature(args.distill_temperature),
            "weight": distill.check_weight(args.distill_weight),
            "teachers": ["ce", run_name("ls", smoothing[0])],
        }
        losses = (["ce"] if "ce" not in losses else []) + losses
        if "ls" not in losses:
            losses.insert(losses.index("ce") + 1, "ls")
    device = _check_device(args.device)
    threads = args.threads if args.threads is not None else 1
    threads = _positive_int("--threads", threads)
    with worker.helper(threads) as pool:
        return _run_checked(args, losses, smoothing, seeds, epochs, device, threads, params,
                            distill_cfg, noise, wall_start, pool)


def _run_checked(args: argparse.Namespace, losses: list[str], smoothing: list[float], seeds: int,
                 epochs: int, device: str, threads: int, params: dict[str, dict[str, float]],
                 distill_cfg: dict[str, Any] | None, noise: float, wall_start: float, pool: Any) -> int:
    """The rest of :func:`run`: load the data (in the worker ``pool`` if there is one, while this process
    imports the optimizer machinery), check the plan and ``--out``, run the experiment."""
    import torch

    from .losses import SMOOTHING_FREE, make_loss, run_name

    if pool is None:
        dataset, splits = _load_data(args.data, args.dataset, args.target, seeds)
    else:
        job = pool.apply_async(_load_data, (args.data, args.dataset, args.target, seeds))
        worker.import_optimizer_machinery()
        dataset, splits = job.get()
    plan: list[tuple[str, str, float | None]] = []  # (run name, loss name, smoothing or None)
    for name in losses:
        for eps in ([None] if name in SMOOTHING_FREE else smoothing):
            make_loss(name, 0.0 if eps is None else eps, dataset.num_classes,
                      **params.get(name, {}))  # fails early
            plan.append((run_name(name, eps or 0.0), name, eps))
    out = args.out or os.path.join("runs", time.strftime("compare-%Y%m%d-%H%M%S"))
    final, tmp, created = _prepare_out(out)

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    options = {"noise": noise, "params": params, "distill": distill_cfg}
    try:
        _experiment(args, dataset, splits, plan, epochs, device, threads, tmp, wall_start, final,
                    options, pool)
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


def _fit(model_name: str, loss_fn: Any, data: Any, y_train: Any, num_classes: int, cfg: Any,
         seed: int, desc: str) -> tuple[dict[str, float], Any, Any, float]:
    """Train one model on ``(data.X_train, y_train)`` and evaluate it on the clean val/test splits.

    Returns ``(metrics row, model, test logits, fitted temperature)``.
    """
    import torch
    from tqdm import tqdm

    from .. import metrics
    from .models import build_model
    from .train import predict, train

    torch.manual_seed(seed)
    model = build_model(model_name, data.X_train.shape[1], num_classes)
    bar = tqdm(total=cfg.epochs, desc=desc, file=sys.stderr, leave=True, unit="ep",
               dynamic_ncols=True, mininterval=0.25)

    def on_epoch(epoch: int, mean_loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss:.3f}", refresh=False)

    try:
        seconds = train(model, loss_fn, data.X_train, y_train, cfg, seed=seed, on_epoch=on_epoch)
        val = predict(model, data.X_val, cfg.device)
        test = predict(model, data.X_test, cfg.device)
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
    return row, model, test, t


def _experiment(args: argparse.Namespace, dataset: Any, splits: list[Any],
                plan: list[tuple[str, str, float | None]], epochs: int, device: str, threads: int,
                tmp: str, wall_start: float, final: str, options: dict[str, Any], pool: Any) -> None:
    import torch

    from . import distill, figures, report
    from .losses import make_loss
    from .noise import flip_labels
    from .train import TrainConfig, penultimate, predict

    noise: float = options["noise"]
    params: dict[str, dict[str, float]] = options["params"]
    distill_cfg: dict[str, Any] | None = options["distill"]
    k = dataset.num_classes
    seeds = len(splits)
    if pool is not None:
        pool.apply_async(figures.prepare)  # import matplotlib in the worker while this process trains
    # the labels trained on: flipped once per seed, so every loss of a seed sees the same noise
    train_labels = [flip_labels(s.y_train, noise, k, seed)[0] if noise else s.y_train
                    for seed, s in enumerate(splits)]
    n_train = len(splits[0].y_train)
    batch_size = args.batch_size or min(128, max(16, n_train // 8))
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=args.lr, device=device)
    teacher_names = set(distill_cfg["teachers"]) if distill_cfg else set()
    teacher_logits: dict[tuple[str, int], torch.Tensor] = {}
    results: list[report.RunResult] = []
    artifacts: list[figures.RunArtifacts] = []
    for name, loss_name, eps in plan:
        result = report.RunResult(name, loss_name, eps)
        test_logits, test_targets, temps = [], [], []
        feats: dict[str, torch.Tensor] = {}
        for seed in range(seeds):
            data = splits[seed]
            loss_fn = make_loss(loss_name, 0.0 if eps is None else eps, k,
                                **params.get(loss_name, {}))
            row, model, test, t = _fit(args.model, loss_fn, data, train_labels[seed], k, cfg, seed,
                                       f"{name:>10} seed {seed}")
            result.per_seed.append(row)
            test_logits.append(test)
            test_targets.append(data.y_test)
            temps.append(t)
            if name in teacher_names:
                teacher_logits[(name, seed)] = predict(model, data.X_train, device)
            if seed == 0:
                feats = {"train": penultimate(model, data.X_train, device),
                         "test": penultimate(model, data.X_test, device),
                         "templates": model.head.weight.detach().float().cpu()}
        results.append(result)
        artifacts.append(figures.RunArtifacts(
            name, test_logits, test_targets, temps, feats["train"], splits[0].y_train,
            feats["test"], feats["templates"]))

    students: list[distill.Student] = []
    if distill_cfg is not None:
        student_model, temp, weight = (distill_cfg["student_model"], distill_cfg["temperature"],
                                       distill_cfg["weight"])
        for teacher in [None, *distill_cfg["teachers"]]:
            sname = f"{student_model}<-{teacher or 'labels'}"
            sresult = report.RunResult(sname, "distill" if teacher else "ce", None)
            for seed in range(seeds):
                loss_fn = (make_loss("ce", 0.0, k) if teacher is None else
                           distill.DistillationLoss(teacher_logits[(teacher, seed)], temp, weight))
                row, _, _, _ = _fit(student_model, loss_fn, splits[seed], train_labels[seed], k,
                                    cfg, seed, f"{sname:>10} seed {seed}")
                sresult.per_seed.append(row)
            students.append(distill.Student(sresult, teacher))

    sizes = splits[0].sizes()
    losses_run = list(dict.fromkeys(p[1] for p in plan))
    settings = {
        "dataset": dataset.name, "num_classes": k,
        "class_names": dataset.class_names, "num_samples": len(dataset.y),
        "num_features": int(dataset.X.shape[1]), "split": sizes, "model": args.model,
        "losses": [p[1] for p in plan], "runs": [p[0] for p in plan],
        "smoothing": sorted({p[2] for p in plan if p[2] is not None}), "seeds": seeds,
        "epochs": epochs, "batch_size": batch_size, "lr": args.lr,
        "weight_decay": cfg.weight_decay, "device": device, "threads": threads,
        "quick": bool(args.quick), "torch": torch.__version__, "out": final,
        "label_noise": noise,
        "flipped_train_labels": [int((y != s.y_train).sum()) for y, s in zip(train_labels, splits,
                                                                             strict=True)],
        "variant_params": _effective_params(losses_run, params),
        "distill": distill_cfg,
    }
    sentences = report.summary(results, k)
    teachers = {r.name: r for r in results}
    extra_json: dict[str, Any] = {}
    extra_md: list[str] = []
    verdict = ""
    if students and distill_cfg is not None:
        verdict = distill.verdict(students, teachers)
        extra_json["distillation"] = distill.to_json(students, distill_cfg, verdict)
        how = ("soft targets only, T^2 CE(student/T, softmax(teacher/T))" if
               distill_cfg["weight"] == 1.0 else
               f"{distill_cfg['weight']:g} x T^2 CE(student/T, softmax(teacher/T)) + "
               f"{1 - distill_cfg['weight']:g} x CE(student, label)")
        extra_md.append("\n".join([
            "## Distillation (Müller, Kornblith & Hinton 2019)", "",
            f"Students: `{distill_cfg['student_model']}` models, trained for the same epochs "
            f"and seeds (same initialisation per seed), on the teachers' training-set logits at "
            f"temperature T = {distill_cfg['temperature']:g} ({how}); the baseline student is "
            f"trained with plain CE on the training labels alone. Test metrics, mean ± std over "
            f"{seeds} seed(s).", "",
            distill.markdown_table(students, teachers), "",
            verdict]))
    figures.write_all(artifacts, dataset.class_names, tmp, pool)
    wall = time.perf_counter() - wall_start
    with open(os.path.join(tmp, "results.json"), "w", encoding="utf-8") as fh:
        fh.write(report.results_json(results, settings, sentences, wall, extra_json))
    with open(os.path.join(tmp, "report.md"), "w", encoding="utf-8") as fh:
        fh.write(report.markdown_report(results, settings, sentences, wall, extra_md))
    pm = "±" if _can_encode(sys.stdout, "±") else "+-"
    print()
    if noise:
        print(f"label noise: {noise:g} of the training labels flipped "
              f"({settings['flipped_train_labels'][0]} of {sizes['train']}); val/test labels clean")
    print(f"{dataset.name}: {k} classes, train/val/test "
          f"{sizes['train']}/{sizes['val']}/{sizes['test']}, model {args.model}, {epochs} epochs, "
          f"mean {pm} std over {seeds} seed(s)")
    print(report.text_table(results, pm))
    print()
    _print_sentences(sentences)
    if students and distill_cfg is not None:
        print()
        print(f"distillation: student {distill_cfg['student_model']}, "
              f"T = {distill_cfg['temperature']:g}, soft-target weight {distill_cfg['weight']:g}")
        print(distill.text_table(students, teachers, pm))
        print()
        _print_sentences([verdict])
    print(f"total wall time {wall:.1f} s")


def _print_sentences(sentences: list[str]) -> None:
    for sentence in sentences:
        print(f"* {sentence}" if _can_encode(sys.stdout, sentence) else
              f"* {sentence.encode('ascii', 'replace').decode()}")


def _can_encode(stream: Any, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True
