"""Vocab-parallel loss on real gloo groups of 2, 3 and 4 processes (loopback, CPU).

Four processes are spawned once (``_distributed_worker.py``); groups of their first 2, first 3
and all 4 ranks each run every configuration; the tests here compare what each rank saw with the
single-process :func:`labelsmooth.cross_entropy` (reference backend) on the concatenated logits.
Every wait is bounded: gloo's own timeout in the workers and a subprocess timeout here, so a bug
fails the test instead of hanging CI.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from filelock import FileLock  # a dependency of torch

import labelsmooth
import labelsmooth.distributed as lsd

sys.path.insert(0, str(Path(__file__).parent))
import _distributed_worker as worker

WORLDS = (2, 3, 4)
TIMEOUT_S = 240
RTOL = 1e-6


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(world: int, out: Path, attempts: int = 2) -> list[dict[str, Any]]:
    """Run ``world`` worker processes on the loopback interface; kill them all on any failure.

    The port is picked free just before the start; if another process grabbed it meanwhile, the
    group is started once more on a new port."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               WORLD_SIZE=str(world), LS_OUT=str(out), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    procs = [subprocess.Popen([sys.executable, str(Path(worker.__file__))],
                              env=dict(env, RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(world)]
    logs = []
    deadline = time.monotonic() + TIMEOUT_S  # one bound for the whole group
    try:
        for p in procs:
            logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"world {world}: workers did not finish in {TIMEOUT_S} s (hang?)")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if attempts > 1 and any(p.returncode for p in procs) and any(
            "address already in use" in log.lower() for log in logs):
        return _spawn(world, out, attempts - 1)
    for r, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"rank {r} of {world} failed:\n{log}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.fixture(scope="module")
def groups(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[dict[str, Any]]]:
    """One spawn of 4 gloo processes; inside it groups of 2 and 3 ranks (``group=`` subgroups) and
    the 4-rank world group each run everything. ``groups[n][r]`` is what rank r of group n saw."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        ranks = _spawn(max(WORLDS), tmp_path_factory.mktemp("gloo"))
    else:  # under pytest -n: the first xdist worker spawns, the others read its results
        shared = tmp_path_factory.getbasetemp().parent / "labelsmooth-gloo"  # this session only
        with FileLock(str(shared) + ".lock"):
            if not (shared / "done").exists():
                shared.mkdir(exist_ok=True)
                _spawn(max(WORLDS), shared)
                (shared / "done").touch()
        ranks = [torch.load(shared / f"rank{r}.pt", weights_only=False)
                 for r in range(max(WORLDS))]
    return {n: [r["worlds"][n] for r in ranks[:n]] for n in WORLDS} | {"raw": ranks}


def _oracle(i: int, cfg: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    inp = worker.case_inputs(i, cfg)
    logits = inp["logits"].clone().requires_grad_()
    weight = inp["weight"] if cfg["weight"] else None
    loss = labelsmooth.cross_entropy(logits, inp["target"], weight, dim=cfg["dim"],
                                     backend="reference",
                                     **worker.loss_kwargs(cfg, inp))
    upstream = inp["grad_out"] if cfg["reduction"] == "none" else torch.ones(())
    loss.backward(upstream.to(loss.dtype))
    return loss.detach(), logits.grad


CONFIGS = worker.configs()


@pytest.mark.parametrize("world", WORLDS)
def test_loss_and_grad_equal_single_process(groups, world):
    ranks = groups[world]
    failures = []
    for i, cfg in enumerate(CONFIGS):
        want_loss, want_grad = _oracle(i, cfg)
        rtol = RTOL if cfg["dtype"] == "float64" else 1e-5
        # bf16: loss in fp32 either way; the bf16 gradient may round 1 ulp apart (2^-8).
        grad_rtol = 2 ** -7 if cfg["dtype"] == "bfloat16" else rtol
        d = cfg["dim"] % 3
        grad = torch.cat([r["configs"][i]["grad"] for r in ranks], dim=d)
        loss = ranks[0]["configs"][i]["loss"]
        if loss.dtype != want_loss.dtype or loss.shape != want_loss.shape:
            failures.append((i, cfg, "dtype/shape", loss.dtype, loss.shape))
            continue
        if not torch.allclose(loss, want_loss, rtol=rtol, atol=0):
            failures.append((i, cfg, "loss", loss, want_loss))
        if grad.dtype != want_grad.dtype or not torch.allclose(grad, want_grad, rtol=grad_rtol,
                                                                atol=grad_rtol * 1e-3):
            failures.append((i, cfg, "grad", (grad - want_grad).abs().max()))
    assert not failures, failures[:5]


@pytest.mark.parametrize("world", WORLDS)
def test_loss_bitwise_identical_on_every_rank(groups, world):
    ranks = groups[world]
    for i in range(len(CONFIGS)):
        for r in ranks[1:]:
            same = torch.equal(r["configs"][i]["loss"], ranks[0]["configs"][i]["loss"])
            assert same, (i, r["rank"])


def test_special_cases_are_exact(groups):
    """Fully ignored mean is 0 with zero gradient; -inf logits (whole -inf shards) give no NaN."""
    for world in WORLDS:
        for i, cfg in enumerate(CONFIGS):
            if cfg["special"] == "all_ignored":
                for r in groups[world]:
                    assert r["configs"][i]["loss"].item() == 0.0
                    assert torch.count_nonzero(r["configs"][i]["grad"]) == 0
            if cfg["special"] == "masked":
                for r in groups[world]:
                    assert torch.isfinite(r["configs"][i]["loss"]).all()
                    assert torch.isfinite(r["configs"][i]["grad"]).all()


@pytest.mark.parametrize("world", WORLDS)
def test_edge_shapes(groups, world):
    vec = torch.linspace(-2, 3, worker.V, dtype=torch.float64)
    want_vec = labelsmooth.cross_entropy(vec, torch.tensor(3), label_smoothing=0.2, dim=-1,
                                         backend="reference")
    half = torch.linspace(-2, 3, 2 * worker.V).reshape(2, worker.V).half()
    want_half = labelsmooth.cross_entropy(half, torch.tensor([1, worker.V - 1]),
                                          label_smoothing=0.1, backend="reference")
    for r in groups[world]:
        misc = r["misc"]
        assert misc["empty mean"].item() == 0.0 and misc["empty sum"].item() == 0.0
        assert misc["empty none"].shape == (0,)
        torch.testing.assert_close(misc["unbatched"], want_vec, rtol=RTOL, atol=0)
        assert misc["half"].dtype == torch.float32
        torch.testing.assert_close(misc["half"], want_half, rtol=1e-6, atol=0)


def test_loss_independent_of_world_size(groups):
    """Smoothing is over the global V: the same loss for 2, 3 and 4 ranks. Smoothing over the local
    shard size (the Megatron bug) would not be: shown with the same data below."""
    for i, cfg in enumerate(CONFIGS):
        losses = [groups[w][0]["configs"][i]["loss"] for w in WORLDS]
        rtol = 1e-12 if cfg["dtype"] == "float64" else 1e-6  # summation order differs
        for loss in losses[1:]:
            torch.testing.assert_close(loss, losses[0], rtol=rtol, atol=0)
    # The local-size variant for non_target smoothing, eps/(V_r - 1) on rank 0's shard, differs
    # between the splits we test, so a test against the global formula can tell them apart.
    i = next(i for i, c in enumerate(CONFIGS) if c["convention"] == "non_target"
             and c["weight"] is None and c["reduction"] == "mean" and not c["z_loss"])
    cfg, inp = CONFIGS[i], worker.case_inputs(i, CONFIGS[i])
    local_eps = [cfg["eps"] * worker.V / (worker.SPLITS[w][0] - 1) for w in WORLDS]
    buggy = [labelsmooth.cross_entropy(inp["logits"], inp["target"], dim=-1, backend="reference",
                                       label_smoothing=min(e, 1.0)).item() for e in local_eps]
    assert len({round(b, 9) for b in buggy}) == len(WORLDS)
    assert groups[2][0]["configs"][i]["loss"].item() not in buggy


@pytest.mark.parametrize("world", WORLDS)
def test_linear_cross_entropy_matches_single_process(groups, world):
    for i, cfg in enumerate(worker.linear_configs()):
        inp = worker.linear_inputs(i, cfg)
        hidden = inp["hidden"].clone().requires_grad_()
        w = inp["classifier"].clone().requires_grad_()
        b = inp["bias"].clone().requires_grad_()
        logits = hidden @ w.t() + (b if cfg["bias"] else 0.0)
        loss = labelsmooth.cross_entropy(logits, inp["target"],
                                         inp["weight"] if cfg["weight"] else None, dim=-1,
                                         backend="reference", **worker.loss_kwargs(cfg, inp))
        upstream = inp["grad_out"] if cfg["reduction"] == "none" else torch.ones(())
        loss.backward(upstream)
        partial_sum = torch.zeros_like(hidden.grad)
        for rank, got in enumerate(groups[world]):
            sl = worker.shard(rank, world)
            torch.testing.assert_close(got["linear"][i]["loss"],
                                       loss.detach(), rtol=RTOL, atol=0)
            if cfg["reduce_hidden_grad"]:  # every rank holds the full hidden gradient
                torch.testing.assert_close(got["linear"][i]["grad_hidden"], hidden.grad,
                                           rtol=RTOL, atol=1e-12)
            else:  # each rank holds its shard's partial dz_r @ W_r; they sum to the gradient
                partial = got["linear"][i]["grad_hidden"]
                assert not torch.allclose(partial, hidden.grad)
                partial_sum += partial
            torch.testing.assert_close(got["linear"][i]["grad_classifier"], w.grad[sl],
                                       rtol=RTOL, atol=1e-12)
            if cfg["bias"]:
                torch.testing.assert_close(got["linear"][i]["grad_bias"], b.grad[sl], rtol=RTOL,
                                           atol=1e-12)
        if not cfg["reduce_hidden_grad"]:
            torch.testing.assert_close(partial_sum, hidden.grad, rtol=RTOL, atol=1e-12)


@pytest.mark.parametrize("world", WORLDS)
def test_communication_matches_communication_volume(groups, world):
    """What was actually handed to the collectives equals the documented per-call volume."""
    n = worker.BATCH[0] * worker.BATCH[1]
    for i, cfg in enumerate(CONFIGS):
        got = groups[world][0]["configs"][i]
        vol = lsd.communication_volume(n, world_size=world, dtype=getattr(torch, cfg["dtype"]),
                                       label_smoothing=cfg["eps"],
                                       weighted=cfg["weight"] is not None)
        names = [name for name, _ in got["fwd"]]
        assert names == ["all_gather", "all_reduce_max", "all_reduce_sum"], names
        sizes = [nbytes for _, nbytes in got["fwd"]]
        assert sizes == [vol.size_gather_bytes, vol.max_allreduce_bytes,
                         vol.sum_allreduce_bytes], (i, sizes)
        assert got["bwd"] == [], "backward must not communicate"
    # Linear: 2 all-reduces per chunk of 4 tokens; backward all-reduces the N x H hidden gradient.
    for i, cfg in enumerate(worker.linear_configs()):
        got = groups[world][0]["linear"][i]
        vol = lsd.communication_volume(n, world_size=world, dtype=torch.float64,
                                       label_smoothing=cfg["eps"],
                                       weighted=cfg["weight"] is not None,
                                       hidden_size=worker.HIDDEN)
        assert len(got["fwd"]) == 1 + 2 * 4  # ceil(15 / 4) chunks
        assert sum(b for _, b in got["fwd"]) == vol.forward_bytes
        want_bwd = [("all_reduce_sum", vol.backward_bytes)] if cfg["reduce_hidden_grad"] else []
        assert got["bwd"] == want_bwd


def test_communication_volume_formula():
    vol = lsd.communication_volume(1000, world_size=4, label_smoothing=0.1)
    assert (vol.size_gather_bytes, vol.max_allreduce_bytes, vol.sum_allreduce_bytes) == (
        256, 4000, 12000)
    assert vol.total_bytes == 256 + 16 * 1000
    assert vol.ring_bytes_per_rank == 2 * 3 / 4 * 16000 + 3 * 256
    vol = lsd.communication_volume(10, world_size=2, dtype=torch.float64, label_smoothing=0.1,
                                   weighted=True, hidden_size=8, hidden_dtype=torch.bfloat16)
    assert (vol.packed_fields, vol.max_allreduce_bytes, vol.sum_allreduce_bytes,
            vol.backward_bytes) == (4, 80, 320, 160)
    assert lsd.communication_volume(10, world_size=2).packed_fields == 2
    with pytest.raises(ValueError, match="num_tokens"):
        lsd.communication_volume(-1, world_size=2)


@pytest.mark.parametrize("world", WORLDS)
def test_bad_input_raises_on_every_rank(groups, world):
    ranks = groups[world]
    expect = {
        "target shape": ("ValueError", "disagree on"),
        "target values": ("ValueError", "class ids"),
        "zero classes": ("ValueError", f"rank(s) [{world - 1}] have 0 classes"),
        "options": ("ValueError", "disagree on label_smoothing"),
        "target range": ("IndexError", f"class id {worker.V}"),
    }
    for case, (kind, text) in expect.items():
        for r in ranks:
            assert r["bad"][case][0] == kind, (case, r["rank"], r["bad"][case])
            assert text in r["bad"][case][1], (case, r["rank"], r["bad"][case])
    # Only rank 1 passed a wrong-length weight: it names the problem, the others name rank 1.
    for r in ranks:
        kind, msg = r["bad"]["local weight"]
        assert kind == "ValueError"
        assert ("weight (this rank's slice) has shape" in msg) if r["rank"] == 1 else (
            "rank(s) [1]" in msg), msg
    # The group is still in step after all that: a normal call works and matches the oracle.
    z = torch.cat([r["after_bad_input"] for r in ranks], dim=-1)
    want = labelsmooth.cross_entropy(z, torch.arange(15) % worker.V, label_smoothing=0.1,
                                     backend="reference")
    for r in ranks:
        torch.testing.assert_close(r["after_bad"], want, rtol=RTOL, atol=0)


def test_uninitialised_process_group_is_a_clear_error(groups):
    for r in groups["raw"]:
        assert r["no_group"][0] == "RuntimeError" and "init_process_group" in r["no_group"][1]
    assert not torch.distributed.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        lsd.vocab_parallel_cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(RuntimeError, match="init_process_group"):
        lsd.vocab_parallel_linear_cross_entropy(torch.zeros(2, 4), torch.zeros(3, 4),
                                                torch.zeros(2, dtype=torch.long))


GROUP_SCRIPT = r"""
import os, sys, torch, torch.distributed as dist
import labelsmooth as ls
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{sys.argv[1]}", rank=0, world_size=1)
g = torch.Generator().manual_seed(0)
h = torch.randn(6, 4, dtype=torch.float64, generator=g)
w = torch.randn(7, 4, dtype=torch.float64, generator=g)
b = torch.randn(7, dtype=torch.float64, generator=g)
t = torch.tensor([0, 6, -100, 3, 2, 1])
out = []
for group in (None, dist.group.WORLD):
    leaves = [x.clone().requires_grad_() for x in (h, w, b)]
    loss = ls.linear_cross_entropy(*leaves[:2], t, leaves[2], label_smoothing=0.2,
                                   convention="non_target", group=group)
    loss.backward()
    out.append([loss.detach(), *[x.grad for x in leaves]])
for a, c in zip(*out):
    torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)
print("same", float(out[1][0]))
dist.destroy_process_group()
"""


def test_linear_cross_entropy_group_keyword_routes_to_vocab_parallel():
    """``linear_cross_entropy(group=...)`` is the vocab-parallel linear loss (world size 1 here:
    the whole classifier on one rank gives the single-process values)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", GROUP_SCRIPT, str(port)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("same ")
