"""Runs the Triton kernels under the interpreter and saves inputs and outputs for the tests.

Used by test_triton_interpret.py in a subprocess started with ``TRITON_INTERPRET=1`` (Triton reads it
when it is first imported, so it cannot be switched on inside the pytest process). This module's top
level imports nothing but the standard library so that the test can import :data:`CE_CASES` and
:data:`LINEAR_CASES` without importing Triton.

    TRITON_INTERPRET=1 python tests/_triton_interpret_worker.py OUT.pt
"""

from __future__ import annotations

import itertools
import sys


def _ce_cases() -> dict[str, dict]:
    cases: dict[str, dict] = {}
    for dtype, reduction, weight, conv in itertools.product(
            ("float32", "bfloat16"), ("mean", "sum", "none"), (None, "class", "sample"),
            ("uniform", "non_target")):
        name = f"ce-{dtype}-{reduction}-{weight}-{conv}"
        cases[name] = dict(dtype=dtype, reduction=reduction, weight=weight, convention=conv,
                           eps=0.1, z_loss=0.0, n=13, k=100)
    for reduction, weight in itertools.product(("mean", "none"), (None, "class", "sample")):
        cases[f"ce-float64-zloss-{reduction}-{weight}"] = dict(
            dtype="float64", reduction=reduction, weight=weight, convention="uniform", eps=0.2,
            z_loss=0.01, n=9, k=130)
    cases["ce-inplace-float32"] = dict(dtype="float32", reduction="mean", weight="class",
                                       convention="uniform", eps=0.1, z_loss=0.001, n=11, k=77,
                                       inplace=True)
    cases["ce-inplace-bfloat16"] = dict(dtype="bfloat16", reduction="none", weight=None,
                                        convention="non_target", eps=0.1, z_loss=0.0, n=11, k=64,
                                        inplace=True)
    cases["ce-dim1-3d"] = dict(dtype="float32", reduction="mean", weight=None, convention="uniform",
                               eps=0.1, z_loss=0.0, n=4, k=70, layout="dim1")
    cases["ce-dim-1-btv"] = dict(dtype="float32", reduction="none", weight="sample",
                                 convention="uniform", eps=0.1, z_loss=0.0, n=6, k=70,
                                 layout="btv")
    cases["ce-masked-neginf"] = dict(dtype="float32", reduction="sum", weight=None,
                                     convention="uniform", eps=0.0, z_loss=0.0, n=8, k=90,
                                     neginf=True)
    cases["ce-one-class"] = dict(dtype="float32", reduction="mean", weight=None,
                                 convention="uniform", eps=0.3, z_loss=0.0, n=5, k=1)
    cases["ce-all-ignored"] = dict(dtype="float32", reduction="mean", weight=None,
                                   convention="uniform", eps=0.1, z_loss=0.0, n=5, k=40,
                                   all_ignored=True)
    cases["ce-eps-1"] = dict(dtype="float32", reduction="mean", weight="class",
                             convention="uniform", eps=1.0, z_loss=0.0, n=7, k=33)
    return cases


def _linear_cases() -> dict[str, dict]:
    cases: dict[str, dict] = {}
    grid = [*itertools.product(("float32",), ("mean", "sum", "none"), (None, "class", "sample"),
                               (True, False)),
            *itertools.product(("bfloat16",), ("mean", "none"), (None, "class", "sample"), (True,))]
    for dtype, reduction, weight, bias in grid:
        name = f"lin-{dtype}-{reduction}-{weight}-{'bias' if bias else 'nobias'}"
        cases[name] = dict(dtype=dtype, reduction=reduction, weight=weight, bias=bias,
                           convention="non_target" if weight == "sample" else "uniform",
                           eps=0.1, z_loss=0.001, n=19, h=8, v=90, chunk=5)
    return cases


CE_CASES = _ce_cases()
LINEAR_CASES = _linear_cases()


def ce_inputs(spec: dict):
    """Deterministic inputs of a cross-entropy case (float64 logits before the cast)."""
    import torch

    gen = torch.Generator().manual_seed(hash_name(spec))
    n, k = spec["n"], spec["k"]
    logits = torch.randn(n, k, generator=gen, dtype=torch.float64) * 3
    target = torch.randint(0, k, (n,), generator=gen)
    target[::4] = -100
    if spec.get("all_ignored"):
        target.fill_(-100)
    if spec.get("neginf"):
        mask = torch.rand(n, k, generator=gen) < 0.3
        mask[torch.arange(n), target.clamp(min=0)] = False
        logits[mask] = float("-inf")
    weight = torch.rand(k, generator=gen, dtype=torch.float64) + 0.5
    return logits, target, weight


def hash_name(spec: dict) -> int:
    return sum(ord(ch) * (i + 1) for i, ch in enumerate(repr(sorted(spec.items())))) % 2**31


def linear_inputs(spec: dict):
    import torch

    gen = torch.Generator().manual_seed(hash_name(spec))
    n, h, v = spec["n"], spec["h"], spec["v"]
    hidden = torch.randn(n, h, generator=gen, dtype=torch.float64)
    classifier = torch.randn(v, h, generator=gen, dtype=torch.float64)
    bias = torch.randn(v, generator=gen, dtype=torch.float64)
    target = torch.randint(0, v, (n,), generator=gen)
    target[1::3] = -100
    weight = torch.rand(v, generator=gen, dtype=torch.float64) + 0.5
    return hidden, classifier, bias, target, weight


def _run_ce(spec: dict) -> dict:
    import torch

    import labelsmooth
    from labelsmooth import _dispatch
    from labelsmooth.functional import prepare

    dtype = getattr(torch, spec["dtype"])
    logits64, target, weight64 = ce_inputs(spec)
    x = logits64.to(dtype)
    weight = None if spec["weight"] is None else weight64.to(torch.float32)
    kw = dict(weight_mode=spec["weight"] or "class", reduction=spec["reduction"],
              label_smoothing=spec["eps"], convention=spec["convention"], z_loss=spec["z_loss"])
    layout = spec.get("layout")
    if layout == "dim1":  # (N, C, d) with d = 2: rows regrouped, class dim 1
        xin = x.reshape(spec["n"] // 2, 2, spec["k"]).transpose(1, 2).contiguous()
        tin = target.reshape(spec["n"] // 2, 2)
        dim = 1
    elif layout == "btv":
        xin = x.reshape(2, spec["n"] // 2, spec["k"])
        tin = target.reshape(2, spec["n"] // 2)
        dim = -1
    else:
        xin, tin, dim = x, target, 1
    leaf = xin.detach().clone().requires_grad_(True)
    flat, flat_t, w, opts, _ = prepare(leaf, tin, weight, ignore_index=-100, dim=dim, **kw)
    chosen = _dispatch.resolve("triton", flat, flat_t, w, opts).__name__
    inplace = bool(spec.get("inplace"))
    src = leaf.detach().clone().requires_grad_(True) if inplace else leaf
    inp = src * 1 if inplace else src  # in place needs a non-leaf to write into
    loss = labelsmooth.cross_entropy(inp, tin, weight, dim=dim, backend="triton",
                                     inplace_backward=inplace, **kw)
    gen = torch.Generator().manual_seed(7)
    grad_output = (torch.rand(loss.shape, generator=gen) + 0.5).to(loss.dtype)
    (grad,) = torch.autograd.grad(loss, src, grad_output)
    return {"loss": loss.detach(), "grad": grad, "grad_output": grad_output, "backend": chosen,
            "input": xin.detach(), "target": tin, "dim": dim}


def _run_linear(spec: dict) -> dict:
    import torch

    from labelsmooth import linear as lin

    dtype = getattr(torch, spec["dtype"])
    hidden64, classifier64, bias64, target, weight64 = linear_inputs(spec)
    leaves = [hidden64.to(dtype).requires_grad_(True), classifier64.to(dtype).requires_grad_(True)]
    if spec["bias"]:
        leaves.append(bias64.to(dtype).requires_grad_(True))
    weight = None if spec["weight"] is None else weight64.to(torch.float32)
    name, step = lin._step_for("triton", leaves[0].device)
    loss = lin.linear_cross_entropy(
        leaves[0], leaves[1], target, leaves[2] if spec["bias"] else None, weight=weight,
        weight_mode=spec["weight"] or "class", reduction=spec["reduction"],
        label_smoothing=spec["eps"], convention=spec["convention"], z_loss=spec["z_loss"],
        chunk_size=spec["chunk"], backend="triton")
    gen = torch.Generator().manual_seed(7)
    grad_output = (torch.rand(loss.shape, generator=gen) + 0.5).to(loss.dtype)
    grads = torch.autograd.grad(loss, leaves, grad_output)
    return {"loss": loss.detach(), "grads": list(grads), "grad_output": grad_output,
            "backend": f"{name}:{step.__name__}", "inputs": [t.detach() for t in leaves]}


def main(path: str) -> int:
    import torch

    from labelsmooth.backends.triton import _kernels

    results: dict[str, dict] = {"_interpreting": {"value": _kernels.interpreting()}}
    for name, spec in CE_CASES.items():
        try:
            results[name] = _run_ce(spec)
        except Exception as exc:  # reported per case by the test
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    for name, spec in LINEAR_CASES.items():
        try:
            results[name] = _run_linear(spec)
        except Exception as exc:
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    torch.save(results, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
