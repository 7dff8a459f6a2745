"""Aggregation, the terminal / Markdown table, the plain-language summary and ``results.json``."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

SCHEMA = "labelsmooth.compare/1"

# key, column title, display scale, format
METRICS: list[tuple[str, str, float, str]] = [
    ("accuracy", "acc %", 100.0, "{:.1f}"),
    ("nll", "NLL", 1.0, "{:.3f}"),
    ("ece", "ECE %", 100.0, "{:.1f}"),
    ("gap", "conf-acc %", 100.0, "{:+.1f}"),
    ("nll_ts", "NLL@T", 1.0, "{:.3f}"),
    ("ece_ts", "ECE@T %", 100.0, "{:.1f}"),
    ("temperature", "T", 1.0, "{:.2f}"),
    ("logit_gap", "logit gap", 1.0, "{:.2f}"),
    ("train_time_s", "train s", 1.0, "{:.2f}"),
]
METRIC_KEYS = [m[0] for m in METRICS]


@dataclass
class RunResult:
    """All seeds of one (loss, smoothing) pair."""

    name: str
    loss: str
    smoothing: float | None
    per_seed: list[dict[str, float]] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        return [float(s[key]) for s in self.per_seed]

    def mean(self, key: str) -> float:
        return statistics.fmean(self.values(key))

    def std(self, key: str) -> float:
        """Sample standard deviation over seeds (0 with one seed)."""
        v = self.values(key)
        return statistics.stdev(v) if len(v) > 1 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "loss": self.loss, "smoothing": self.smoothing,
                "per_seed": self.per_seed,
                "mean": {k: self.mean(k) for k in METRIC_KEYS},
                "std": {k: self.std(k) for k in METRIC_KEYS}}


def _cell(run: RunResult, key: str, scale: float, fmt: str, pm: str) -> str:
    text = fmt.format(run.mean(key) * scale)
    if len(run.per_seed) > 1:
        text += f" {pm} " + fmt.format(run.std(key) * scale).lstrip("+")
    return text


def table_rows(runs: list[RunResult], pm: str = "±") -> tuple[list[str], list[list[str]]]:
    header = ["loss"] + [m[1] for m in METRICS]
    rows = [[r.name] + [_cell(r, k, s, f, pm) for k, _, s, f in METRICS] for r in runs]
    return header, rows


def text_table(runs: list[RunResult], pm: str = "±") -> str:
    """Aligned plain-text table for the terminal."""
    return render_text(*table_rows(runs, pm))


def render_text(header: list[str], rows: list[list[str]]) -> str:
    """Aligned plain text: first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def markdown_table(runs: list[RunResult]) -> str:
    return render_markdown(*table_rows(runs))


def render_markdown(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def optimal_logit_gap(loss: str, smoothing: float | None, num_classes: int) -> float | None:
    """Logit gap (top minus mean of the others) minimising label-smoothed CE: log(1 + K(1-e)/e)."""
    if smoothing is None or smoothing <= 0.0 or loss not in ("ls", "ls-nt"):
        return None
    eps = smoothing * num_classes / (num_classes - 1) if loss == "ls-nt" else smoothing
    if eps >= 1.0:
        return 0.0
    return math.log1p(num_classes * (1.0 - eps) / eps)


def _confidence_phrase(gap: float) -> str:
    points = abs(gap) * 100
    if points < 0.5:
        return f"about calibrated on average (confidence within {points:.1f} points of accuracy)"
    side = "over" if gap > 0 else "under"
    word = "above" if gap > 0 else "below"
    return f"{side}-confident (mean confidence {points:.1f} points {word} accuracy)"


def summary(runs: list[RunResult], num_classes: int) -> list[str]:
    """A few plain sentences generated from the numbers (no fixed claims)."""
    if not runs:
        return []
    base = next((r for r in runs if r.loss == "ce"), runs[0])
    n_seeds = len(base.per_seed)
    out = [f"{base.name} is {_confidence_phrase(base.mean('gap'))}; its ECE is "
           f"{base.mean('ece') * 100:.1f}% and its mean logit gap {base.mean('logit_gap'):.2f}."]
    for r in runs:
        if r is base:
            continue
        delta = (r.mean("accuracy") - base.mean("accuracy")) * 100
        noise = math.hypot(r.std("accuracy"), base.std("accuracy")) * 100
        if n_seeds > 1 and abs(delta) <= noise:
            acc = (f"changed test accuracy by {delta:+.1f} points, within the seed-to-seed spread "
                   f"({noise:.1f})")
        elif delta >= 0.05:
            acc = f"raised test accuracy by {delta:.1f} points"
        elif delta <= -0.05:
            acc = f"lowered test accuracy by {-delta:.1f} points"
        else:
            acc = "left test accuracy unchanged"
        sentence = (f"Compared with {base.name}, {r.name} {acc} and is "
                    f"{_confidence_phrase(r.mean('gap'))}; ECE {r.mean('ece') * 100:.1f}% vs "
                    f"{base.mean('ece') * 100:.1f}%, NLL {r.mean('nll'):.3f} vs {base.mean('nll'):.3f}.")
        out.append(sentence)
        opt = optimal_logit_gap(r.loss, r.smoothing, num_classes)
        gap_text = (f"Its mean logit gap (top logit minus the mean of the others) is "
                    f"{r.mean('logit_gap'):.2f} vs {base.mean('logit_gap'):.2f}")
        if opt is not None:
            gap_text += f"; the smoothed loss is minimised at {opt:.2f}"
        out.append(gap_text + ".")
    if len(runs) > 1:
        before = min(runs, key=lambda r: r.mean("nll"))
        after = min(runs, key=lambda r: r.mean("nll_ts"))
        ece_after = ", ".join(f"{r.name} {r.mean('ece_ts') * 100:.1f}%" for r in runs)
        temps = ", ".join(f"{r.name} T={r.mean('temperature'):.2f}" for r in runs)
        same = "also " if after is before else ""
        out.append(f"Before temperature scaling the lowest NLL is {before.name}'s "
                   f"({before.mean('nll'):.3f}); after it (T fitted on the validation split: {temps}; "
                   f"T > 1 softens an over-confident model, T < 1 sharpens an under-confident one) "
                   f"the lowest NLL is {same}{after.name}'s ({after.mean('nll_ts'):.3f}); ECE after "
                   f"scaling: {ece_after}.")
    return out


def results_json(runs: list[RunResult], settings: dict[str, Any], sentences: list[str],
                 wall_time_s: float, extra: dict[str, Any] | None = None) -> str:
    """The JSON document; ``extra`` adds top-level keys (``distillation``)."""
    doc = {"schema": SCHEMA, "settings": settings, "metrics": METRIC_KEYS,
           "runs": [r.to_json() for r in runs], "summary": sentences, "wall_time_s": wall_time_s,
           **(extra or {})}
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def noise_sentence(settings: dict[str, Any]) -> str:
    """What ``--noise`` did, in words ('' without label noise)."""
    noise = settings.get("label_noise", 0.0)
    if not noise:
        return ""
    flipped = settings.get("flipped_train_labels", [])
    count = flipped[0] if flipped else round(noise * settings["split"]["train"])
    return (f"**Label noise:** {noise:g} of the training labels ({count} of "
            f"{settings['split']['train']} per seed) were flipped to a different class chosen "
            f"uniformly at random (seeded per seed, the same flips for every loss); the validation "
            f"and test labels are clean, so every number below is measured against the true labels.")


def markdown_report(runs: list[RunResult], settings: dict[str, Any], sentences: list[str],
                    wall_time_s: float, extra_sections: list[str] | None = None) -> str:
    """The report; ``extra_sections`` (Markdown blocks) go after "What changed"."""
    s = settings
    noise = noise_sentence(s)
    lines = [
        f"# labelsmooth compare: {s['dataset']}",
        "",
        f"{s['num_classes']} classes, {s['num_features']} features; stratified split "
        f"train {s['split']['train']} / validation {s['split']['val']} / test {s['split']['test']}. "
        f"Model `{s['model']}`, {s['epochs']} epochs, batch {s['batch_size']}, AdamW lr {s['lr']:g} "
        f"(cosine), weight decay {s['weight_decay']:g}, device `{s['device']}`. "
        f"Mean ± std over {s['seeds']} seed(s); each seed draws its own split and initialisation, "
        f"shared by all losses. Total wall time {wall_time_s:.1f} s.",
        "",
        *([noise, ""] if noise else []),
        markdown_table(runs),
        "",
        "Columns: test accuracy; NLL; ECE (15 equal-width bins on top-1 confidence, Guo et al. 2017); "
        "signed mean confidence minus accuracy (positive = over-confident); NLL and ECE after "
        "temperature scaling with T fitted on the validation split; the fitted T; mean gap between "
        "the top logit and the mean of the other logits; training time per seed.",
        "",
        "## What changed",
        "",
        *[f"* {t}" for t in sentences],
        "",
        *[line for block in (extra_sections or []) for line in (block, "")],
        "## Figures",
        "",
        "* `reliability.png` — reliability diagrams (test set, all seeds pooled), before and after "
        "temperature scaling.",
        "* `penultimate.png` — penultimate-layer activations of three classes projected on the plane "
        "through their class templates (rows of the last layer's weight), train and test, seed 0 "
        "(Müller, Kornblith & Hinton 2019, fig. 1).",
        "* `confidence.png` — histograms of top-1 confidence on the test set.",
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(settings, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)
