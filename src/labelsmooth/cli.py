"""``labelsmooth`` command line: ``compare``, ``bench`` and ``explain``.

Every subcommand lives in its own module and is imported only when chosen, so ``labelsmooth explain``
never imports plotting code. Bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> module with ``add_arguments(parser)`` and ``run(args) -> int``.
COMMANDS: dict[str, tuple[str, str]] = {
    "explain": ("labelsmooth.explain", "print the smoothed target distribution"),
    "compare": ("labelsmooth.experiments.command",
                "train with and without label smoothing; report accuracy, calibration, geometry"),
    "bench": ("labelsmooth.bench", "time and memory of the loss providers, as ratios to torch"),
}


class UsageError(Exception):
    """A bad argument or input file: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own rule)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="labelsmooth", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # Arguments are declared by the command's module; importing it is cheap for explain/bench,
        # and compare's module imports its heavy libraries only inside run().
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (UsageError, ValueError, TypeError, IndexError, FileNotFoundError, PermissionError) as exc:
        print(f"labelsmooth {args.command}: error: {exc}", file=sys.stderr)
        return 2
