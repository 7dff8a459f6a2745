"""One rank of the gloo groups spawned by ``test_distributed.py`` (run as a script, not collected).

Every rank rebuilds the same global inputs from fixed seeds (:func:`case_inputs`), runs every
configuration of :func:`configs` (and of :func:`linear_configs`) on its slice, then the bad-input
cases, and saves what it saw to ``$LS_OUT/rank{r}.pt``; the test process compares with the
single-process loss. Keeping the case list here lets the test import it to build the oracle.
"""

from __future__ import annotations

import datetime
import itertools
import os
import sys
import traceback
from typing import Any

import torch

V = 13  # global classes: not divisible by 2, 3 or 4
SPLITS = {1: [13], 2: [5, 8], 3: [6, 3, 4], 4: [2, 5, 4, 2]}  # uneven shard sizes, sum V
BATCH = (3, 5)  # 15 rows, class dim last
HIDDEN = 6


def configs() -> list[dict[str, Any]]:
    """The loss configurations every group runs (ids are list positions)."""
    out: list[dict[str, Any]] = []
    for convention, weight, reduction, ignore, z_loss in itertools.product(
            ("uniform", "non_target"), (None, "class", "sample"), ("mean", "sum", "none"),
            (False, True), (0.0, 0.01)):
        out.append(dict(convention=convention, weight=weight, reduction=reduction, ignore=ignore,
                        z_loss=z_loss, eps=0.1, dim=-1, dtype="float64", special=None))
    for reduction in ("mean", "sum", "none"):  # no smoothing: the packed sum has 2 fields only
        out.append(dict(convention="uniform", weight=None, reduction=reduction, ignore=True,
                        z_loss=0.0, eps=0.0, dim=-1, dtype="float64", special=None))
    for weight in (None, "class"):  # torch's (N, C, d) layout with dim=1
        out.append(dict(convention="non_target", weight=weight, reduction="mean", ignore=True,
                        z_loss=0.01, eps=0.2, dim=1, dtype="float64", special=None))
    out.append(dict(convention="uniform", weight="class", reduction="mean", ignore=True,
                    z_loss=0.0, eps=0.1, dim=-1, dtype="float64", special="all_ignored"))
    out.append(dict(convention="uniform", weight=None, reduction="sum", ignore=True, z_loss=0.0,
                    eps=0.0, dim=-1, dtype="float64", special="masked"))
    out.append(dict(convention="uniform", weight="class", reduction="mean", ignore=True,
                    z_loss=0.01, eps=0.1, dim=-1, dtype="float64", special="masked"))
    out.append(dict(convention="uniform", weight="sample", reduction="mean", ignore=True,
                    z_loss=0.01, eps=0.3, dim=-1, dtype="float32", special=None))
    out.append(dict(convention="non_target", weight=None, reduction="mean", ignore=False,
                    z_loss=0.0, eps=0.1, dim=-1, dtype="float64", special="ignore_index=0"))
    out.append(dict(convention="non_target", weight="class", reduction="none", ignore=True,
                    z_loss=0.01, eps=0.1, dim=-1, dtype="bfloat16", special=None))
    return out


def linear_configs() -> list[dict[str, Any]]:
    out = []
    for reduction, weight, bias, reduce in (("mean", None, True, True),
                                            ("sum", "class", False, True),
                                            ("none", "sample", True, True),
                                            ("mean", "class", True, False)):
        out.append(dict(convention="non_target", weight=weight, reduction=reduction, ignore=True,
                        z_loss=0.01, eps=0.1, bias=bias, reduce_hidden_grad=reduce))
    return out


def case_inputs(i: int, cfg: dict[str, Any]) -> dict[str, Any]:
    """Global logits (classes along ``dim``), target, weights and an upstream gradient."""
    g = torch.Generator().manual_seed(1000 + i)
    dtype = getattr(torch, cfg["dtype"])
    logits = torch.randn(*BATCH, V, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, V, BATCH, generator=g)
    ignore_index = -100
    if cfg["ignore"]:
        target[torch.rand(BATCH, generator=g) < 0.3] = ignore_index
    if cfg["special"] == "all_ignored":
        target[:] = ignore_index
    if cfg["special"] == "ignore_index=0":
        ignore_index = 0  # a valid class id is ignored
        target[0, :2] = 0
    if cfg["special"] == "masked":  # -inf logits: whole masked shards, and an ignored all -inf row
        logits[..., 3:9] = float("-inf")
        target = torch.where(target.ge(3) & target.lt(9), torch.zeros_like(target), target)
        logits[0, 0] = float("-inf")
        target[0, 0] = ignore_index
    weight = torch.rand(V, generator=g, dtype=torch.float64) * 1.5 + 0.25
    if cfg["special"] == "masked":  # masked classes weigh 0: with smoothing the loss stays finite
        weight[3:9] = 0.0
    grad_out = torch.randn(BATCH, generator=g, dtype=torch.float64)
    if cfg["dim"] == 1:
        logits = logits.movedim(-1, 1)
    return dict(logits=logits.to(dtype), target=target, ignore_index=ignore_index,
                weight=weight.to(dtype), grad_out=grad_out.to(dtype))


def linear_inputs(i: int, cfg: dict[str, Any]) -> dict[str, Any]:
    g = torch.Generator().manual_seed(5000 + i)
    hidden = torch.randn(*BATCH, HIDDEN, generator=g, dtype=torch.float64)
    classifier = torch.randn(V, HIDDEN, generator=g, dtype=torch.float64)
    bias = torch.randn(V, generator=g, dtype=torch.float64)
    target = torch.randint(0, V, BATCH, generator=g)
    target[torch.rand(BATCH, generator=g) < 0.3] = -100
    weight = torch.rand(V, generator=g, dtype=torch.float64) * 1.5 + 0.25
    grad_out = torch.randn(BATCH, generator=g, dtype=torch.float64)
    return dict(hidden=hidden, classifier=classifier, bias=bias, target=target, weight=weight,
                grad_out=grad_out)


def loss_kwargs(cfg: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    return dict(ignore_index=inputs.get("ignore_index", -100), reduction=cfg["reduction"],
                label_smoothing=cfg["eps"], convention=cfg["convention"],
                weight_mode=cfg["weight"] or "class", z_loss=cfg["z_loss"])


def shard(rank: int, world: int) -> slice:
    sizes = SPLITS[world]
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _catch(fn: Any) -> tuple[str, str]:
    try:
        fn()
    except Exception as exc:  # the test checks type and message
        return type(exc).__name__, str(exc)
    return "no error", ""


def run_group(rank: int, world: int, group: Any) -> dict[str, Any]:
    """Everything one group of ``world`` ranks checks; ``rank`` is the rank within the group."""
    import labelsmooth.distributed as lsd

    out: dict[str, Any] = {"rank": rank}
    sl = shard(rank, world)
    results = []
    for i, cfg in enumerate(configs()):
        inp = case_inputs(i, cfg)
        d = cfg["dim"] % 3
        local = inp["logits"].narrow(d, sl.start, sl.stop - sl.start).clone().requires_grad_()
        weight = inp["weight"][sl] if cfg["weight"] else None
        with lsd.recording_collectives() as fwd_log:
            loss = lsd.vocab_parallel_cross_entropy(local, inp["target"], weight, group=group,
                                                    dim=cfg["dim"], **loss_kwargs(cfg, inp))
        upstream = inp["grad_out"] if cfg["reduction"] == "none" else torch.ones(())
        with lsd.recording_collectives() as bwd_log:
            loss.backward(upstream.to(loss.dtype))
        results.append(dict(loss=loss.detach(), grad=local.grad, fwd=list(fwd_log),
                            bwd=list(bwd_log)))
    out["configs"] = results

    linear = []
    for i, cfg in enumerate(linear_configs()):
        inp = linear_inputs(i, cfg)
        hidden = inp["hidden"].clone().requires_grad_()
        w = inp["classifier"][sl].clone().requires_grad_()
        b = inp["bias"][sl].clone().requires_grad_() if cfg["bias"] else None
        weight = inp["weight"][sl] if cfg["weight"] else None
        with lsd.recording_collectives() as fwd_log:
            loss = lsd.vocab_parallel_linear_cross_entropy(
                hidden, w, inp["target"], b, weight=weight, group=group, chunk_size=4,
                reduce_hidden_grad=cfg["reduce_hidden_grad"], **loss_kwargs(cfg, inp))
        upstream = inp["grad_out"] if cfg["reduction"] == "none" else torch.ones(())
        with lsd.recording_collectives() as bwd_log:
            loss.backward(upstream)
        linear.append(dict(loss=loss.detach(), grad_hidden=hidden.grad, grad_classifier=w.grad,
                           grad_bias=None if b is None else b.grad, fwd=list(fwd_log),
                           bwd=list(bwd_log)))
    out["linear"] = linear

    # Edge shapes: no rows; an unbatched (V,) vector; float16 logits (float32 loss).
    misc: dict[str, Any] = {}
    empty = torch.zeros(0, sl.stop - sl.start, dtype=torch.float64, requires_grad=True)
    for reduction in ("mean", "sum", "none"):
        misc[f"empty {reduction}"] = lsd.vocab_parallel_cross_entropy(
            empty, torch.zeros(0, dtype=torch.long), group=group, reduction=reduction,
            label_smoothing=0.1).detach()
    vec = torch.linspace(-2, 3, V, dtype=torch.float64)[sl]
    misc["unbatched"] = lsd.vocab_parallel_cross_entropy(vec, torch.tensor(3), group=group,
                                                         label_smoothing=0.2)
    half = (torch.linspace(-2, 3, 2 * V).reshape(2, V).half())[:, sl]
    misc["half"] = lsd.vocab_parallel_cross_entropy(half, torch.tensor([1, V - 1]), group=group,
                                                    label_smoothing=0.1)
    out["misc"] = misc

    # Bad input: every rank must raise, and the group must still work afterwards.
    n = 15
    z = torch.randn(n, SPLITS[world][rank], dtype=torch.float64)
    y = torch.arange(n) % V
    bad: dict[str, tuple[str, str]] = {}
    short = n - 1 if rank == 0 else n
    bad["target shape"] = _catch(
        lambda: lsd.vocab_parallel_cross_entropy(z[:short], y[:short], group=group))
    y_other = y.clone()
    if rank == world - 1:
        y_other[3] = (y_other[3] + 1) % V
    bad["target values"] = _catch(lambda: lsd.vocab_parallel_cross_entropy(z, y_other, group=group))
    empty = torch.zeros(n, 0, dtype=torch.float64) if rank == world - 1 else z
    bad["zero classes"] = _catch(lambda: lsd.vocab_parallel_cross_entropy(empty, y, group=group))
    bad_weight = torch.ones(SPLITS[world][rank] + (1 if rank == 1 else 0), dtype=torch.float64)
    bad["local weight"] = _catch(
        lambda: lsd.vocab_parallel_cross_entropy(z, y, bad_weight, group=group))
    eps = 0.1 if rank == 0 else 0.2
    bad["options"] = _catch(
        lambda: lsd.vocab_parallel_cross_entropy(z, y, label_smoothing=eps, group=group))
    y_big = y.clone()
    y_big[0] = V
    bad["target range"] = _catch(lambda: lsd.vocab_parallel_cross_entropy(z, y_big, group=group))
    out["bad"] = bad
    out["after_bad"] = lsd.vocab_parallel_cross_entropy(z, y, label_smoothing=0.1, group=group)
    out["after_bad_input"] = z
    return out


def run(rank: int, world: int) -> dict[str, Any]:
    """Groups of 2, 3 and 4 ranks inside one spawn of 4 processes (start-up is the slow part):
    the first two use ``group=`` subgroups, the last the default (world) group."""
    import labelsmooth.distributed as lsd

    t = torch.zeros(4, V)
    out: dict[str, Any] = {"no_group": _catch(
        lambda: lsd.vocab_parallel_cross_entropy(t, torch.zeros(4).long()))}
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world,
                                         timeout=datetime.timedelta(seconds=60))
    groups = {n: torch.distributed.new_group(list(range(n))) for n in range(2, world)}
    out["worlds"] = {}
    for n in range(2, world + 1):
        if rank < n:
            out["worlds"][n] = run_group(rank, n, groups.get(n))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return out


def main() -> int:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    try:
        out = run(rank, world)
    except Exception:
        traceback.print_exc()
        return 1
    torch.save(out, os.path.join(os.environ["LS_OUT"], f"rank{rank}.pt"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
