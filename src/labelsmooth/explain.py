"""``labelsmooth explain``: print the smoothed target of one element."""

from __future__ import annotations

import argparse

import torch

from ._options import CONVENTIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classes", type=int, required=True, help="number of classes K")
    parser.add_argument("--smoothing", type=float, default=0.1, help="label_smoothing eps")
    parser.add_argument("--convention", choices=CONVENTIONS, default="uniform")
    parser.add_argument("--target", type=int, default=0, help="the target class id")


def run(args: argparse.Namespace) -> int:
    from .functional import smooth_targets

    q = smooth_targets(torch.tensor(args.target), args.classes, args.smoothing,
                       convention=args.convention, dtype=torch.float64)
    print("[" + ", ".join(f"{v:.10g}" for v in q.tolist()) + "]")
    return 0
