"""``compare``'s worker process (experiments/worker.py): the outputs are byte-for-byte those of the serial
path, and errors raised in the worker still become one line and exit 2."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labelsmooth.cli import main
from labelsmooth.experiments import worker

ARGS = ["compare", "--dataset", "wine", "--seeds", "2", "--epochs", "2", "--losses", "ce,ls"]


@contextlib.contextmanager
def _serial(threads: int) -> Iterator[Any]:
    yield None


def _without_times(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_times(v) for k, v in obj.items() if "time" not in k and k != "out"}
    if isinstance(obj, list):
        return [_without_times(v) for v in obj]
    return obj


def test_worker_is_used_on_linux_only() -> None:
    with worker.helper(1) as pool:
        if sys.platform.startswith("linux"):
            assert pool is not None
            assert pool.apply(sum, ([1, 2, 3],)) == 6
        else:
            assert pool is None


def test_worker_and_serial_outputs_are_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert main([*ARGS, "--out", str(tmp_path / "worker")]) == 0
    monkeypatch.setattr(worker, "helper", _serial)
    assert main([*ARGS, "--out", str(tmp_path / "serial")]) == 0
    a, b = tmp_path / "worker", tmp_path / "serial"
    for png in ("reliability.png", "penultimate.png", "confidence.png"):
        assert (a / png).read_bytes() == (b / png).read_bytes(), png
    doc_a = json.loads((a / "results.json").read_text())
    doc_b = json.loads((b / "results.json").read_text())
    assert doc_a["runs"][0]["per_seed"][0]["nll"] == doc_b["runs"][0]["per_seed"][0]["nll"]
    assert _without_times(doc_a) == _without_times(doc_b)


def test_data_error_in_worker_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["compare", "--dataset", "nope", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dataset 'nope' is not known" in err[0]
    assert not out.exists()
