"""The three figures of ``labelsmooth compare`` (matplotlib, Agg backend, imported here only)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from ..metrics import reliability_bins
from .geometry import project_to_template_plane


@dataclass
class RunArtifacts:
    """What the figures need from one (loss, smoothing) run."""

    name: str
    test_logits: list[torch.Tensor]  # one per seed
    test_targets: list[torch.Tensor]
    temperatures: list[float]
    # seed 0: penultimate activations and the last layer's weight (class templates)
    train_features: torch.Tensor
    train_targets: torch.Tensor
    test_features: torch.Tensor
    templates: torch.Tensor

    def pooled(self, scaled: bool) -> tuple[torch.Tensor, torch.Tensor]:
        probs = [(z.double() / (t if scaled else 1.0)).softmax(1)
                 for z, t in zip(self.test_logits, self.temperatures, strict=True)]
        return torch.cat(probs), torch.cat(self.test_targets)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def reliability(runs: list[RunArtifacts], path: str, n_bins: int = 15) -> None:
    """Reliability diagrams, one column per run, before (top) and after (bottom) temperature scaling."""
    plt = _plt()
    fig, axes = plt.subplots(2, len(runs), figsize=(3.2 * len(runs), 6.4), squeeze=False,
                             sharex=True, sharey=True)
    for j, run in enumerate(runs):
        for i, scaled in enumerate((False, True)):
            ax = axes[i][j]
            probs, y = run.pooled(scaled)
            b = reliability_bins(probs, y, n_bins)
            left = b.edges[:-1].numpy()
            width = 1.0 / n_bins
            keep = b.count.numpy() > 0
            ax.bar(left[keep], b.accuracy.numpy()[keep], width=width, align="edge",
                   color="tab:blue", edgecolor="black", linewidth=0.5, label="accuracy")
            ax.bar(left[keep], (b.confidence - b.accuracy).abs().numpy()[keep],
                   bottom=torch.minimum(b.confidence, b.accuracy).numpy()[keep], width=width,
                   align="edge", fill=False, hatch="///", edgecolor="tab:red", linewidth=0.5,
                   label="|confidence − accuracy|")
            ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
            t = sum(run.temperatures) / len(run.temperatures)
            what = f"after T≈{t:.2f}" if scaled else "before scaling"
            ax.set_title(f"{run.name}, {what}\nECE {b.ece * 100:.1f}%", fontsize=9)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            if i == 1:
                ax.set_xlabel("top-1 confidence")
            if j == 0:
                ax.set_ylabel("accuracy")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Reliability (test set, all seeds pooled, 15 bins)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confidence(runs: list[RunArtifacts], path: str) -> None:
    """Histograms of top-1 confidence on the test set, before and after temperature scaling."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    bins = torch.linspace(0, 1, 41).numpy()
    for ax, scaled in zip(axes, (False, True), strict=True):
        for run in runs:
            probs, _ = run.pooled(scaled)
            conf = probs.max(dim=1).values.numpy()
            ax.hist(conf, bins=bins, histtype="step", linewidth=1.5, label=run.name)
        ax.set_yscale("log")
        ax.set_xlabel("top-1 confidence")
        ax.set_title("after temperature scaling" if scaled else "before scaling", fontsize=10)
    axes[0].set_ylabel("test samples (all seeds)")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def penultimate(runs: list[RunArtifacts], classes: list[int], class_names: list[str],
                path: str) -> None:
    """Müller et al. 2019 fig. 1: activations of three classes on the plane through their templates;
    one row per run, train (left) and test (right)."""
    plt = _plt()
    fig, axes = plt.subplots(len(runs), 2, figsize=(7.2, 3.4 * len(runs)), squeeze=False)
    colors = ["tab:blue", "tab:orange", "tab:green"]
    if len(classes) < 3:  # two classes: no plane, show the coordinate along w_1 - w_0 instead
        _penultimate_line(fig, axes, runs, class_names, colors, path)
        return
    for i, run in enumerate(runs):
        templates = run.templates[classes]
        for j, (feats, y, split_name) in enumerate((
                (run.train_features, run.train_targets, "train"),
                (run.test_features, run.test_targets[0], "test"))):
            ax = axes[i][j]
            for c, color in zip(classes, colors, strict=True):
                pts = project_to_template_plane(feats[y == c], templates).numpy()
                ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.6, color=color,
                           label=f"class {class_names[c]}")
            tpl = project_to_template_plane(templates, templates).numpy()
            ax.scatter(tpl[:, 0], tpl[:, 1], marker="X", s=60, color=colors, edgecolor="black",
                       linewidth=0.8)
            ax.set_title(f"{run.name}, {split_name}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle("Penultimate activations on the plane through 3 class templates (X), seed 0",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _penultimate_line(fig: Any, axes: Any, runs: list[RunArtifacts], class_names: list[str],
                      colors: list[str], path: str) -> None:
    plt = _plt()
    for i, run in enumerate(runs):
        w = run.templates[:2].double()
        direction = (w[1] - w[0]) / (w[1] - w[0]).norm().clamp_min(1e-300)
        origin = w.mean(dim=0)
        for j, (feats, y, split_name) in enumerate((
                (run.train_features, run.train_targets, "train"),
                (run.test_features, run.test_targets[0], "test"))):
            ax = axes[i][j]
            coord = (feats.double() - origin) @ direction
            for c in (0, 1):
                ax.hist(coord[y == c].numpy(), bins=30, alpha=0.6, color=colors[c],
                        label=f"class {class_names[c]}")
            ax.set_title(f"{run.name}, {split_name}", fontsize=10)
            ax.set_xlabel("coordinate along w1 - w0")
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle("Two classes: penultimate activations along the template difference, seed 0",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def prepare() -> None:
    """Import matplotlib (about a second): a worker process calls this ahead of :func:`write_all`."""
    _plt()


def write_all(runs: list[RunArtifacts], class_names: list[str], out_dir: str,
              pool: Any = None) -> list[str]:
    """Write reliability.png, penultimate.png and confidence.png; return their file names.

    With a ``multiprocessing`` ``pool`` (whose worker ran :func:`prepare` while this process trained),
    the figures are drawn there, so this process never imports matplotlib; the files are the same.
    """
    classes = [0, 1, 2] if len(class_names) >= 3 else []
    jobs: list[tuple[Any, tuple[Any, ...]]] = [
        (reliability, (runs, os.path.join(out_dir, "reliability.png"))),
        (penultimate, (runs[:3], classes, class_names, os.path.join(out_dir, "penultimate.png"))),
        (confidence, (runs, os.path.join(out_dir, "confidence.png"))),
    ]
    if pool is None:
        for fn, fn_args in jobs:
            fn(*fn_args)
    else:
        for job in [pool.apply_async(fn, fn_args) for fn, fn_args in jobs]:
            job.get()
    return ["reliability.png", "penultimate.png", "confidence.png"]
