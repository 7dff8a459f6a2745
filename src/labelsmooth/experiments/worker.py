"""A second process for ``labelsmooth compare``, so independent work overlaps on a second CPU core.

``compare --quick`` spends most of its wall time importing and drawing, not training: scikit-learn (data
loading and splitting), ``torch._dynamo`` (imported by the first ``torch.optim`` optimizer), matplotlib
and the figures. :func:`helper` forks one worker process (``multiprocessing`` with the ``fork`` start
method, so it inherits the already-imported torch) that loads the data while the main process imports
``torch._dynamo``, imports matplotlib while the main process trains, and then draws the figures (so
matplotlib is imported once, in the worker: on a machine shared with another job the second core may
be busy, and duplicated work would then cost wall time). Results and exceptions come back through the
pool, so an error in the worker is raised in the main process as before.

Where ``fork`` is not a safe start method (anything but Linux) :func:`helper` yields ``None`` and
``compare`` does the same work serially; the outputs are the same either way.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def helper(threads: int) -> Iterator[Any]:
    """A one-process ``multiprocessing`` pool (torch limited to ``threads`` threads in it), or ``None``
    where forking is unavailable; the worker is terminated on exit."""
    if not sys.platform.startswith("linux") or "fork" not in multiprocessing.get_all_start_methods():
        yield None
        return
    import torch

    with multiprocessing.get_context("fork").Pool(1, initializer=torch.set_num_threads,
                                                  initargs=(threads,)) as pool:
        yield pool


def import_optimizer_machinery() -> None:
    """Import ``torch._dynamo``, which the first ``torch.optim`` optimizer construction imports anyway
    (through ``torch._compile._disable_dynamo``); called while the worker is busy, it costs no wall time
    later."""
    import importlib

    importlib.import_module("torch._dynamo")
