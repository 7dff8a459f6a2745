"""The Triton kernels on CPU under Triton's interpreter, against the float64 oracle.

Triton decides between compiling and interpreting when it is first imported (``TRITON_INTERPRET``),
so the kernels run in one subprocess started with ``TRITON_INTERPRET=1``
(``_triton_interpret_worker.py``); it saves every case's inputs and results, and each case below is
one test comparing them with the oracle. No conftest and no environment change in this process.
GPU tests (compiled kernels) are at the end, marked ``gpu``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import labelsmooth
from _ls_oracle import oracle_linear, oracle_loss
from _triton_interpret_worker import CE_CASES, LINEAR_CASES, ce_inputs, linear_inputs

pytest.importorskip("triton")

WORKER = Path(__file__).with_name("_triton_interpret_worker.py")
TOL = {"float64": 1e-10, "float32": 2e-5, "bfloat16": 2e-2}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("triton_interpret") / "results.pt"
    src = Path(labelsmooth.__file__).resolve().parent.parent
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([str(src), *sys.path])}
    done = subprocess.run([sys.executable, str(WORKER), str(out)], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=False)


def _close(got, want, dtype_name):
    scale = max(float(want.abs().max()) if want.numel() else 0.0, 1.0)
    err = float((got.double() - want).abs().max()) if want.numel() else 0.0
    assert err <= TOL[dtype_name] * scale, f"max error {err} > {TOL[dtype_name]} * {scale}"


def test_worker_ran_the_interpreter(results):
    assert results["_interpreting"]["value"] is True


@pytest.mark.parametrize("name", list(CE_CASES))
def test_cross_entropy_kernel(results, name):
    spec = CE_CASES[name]
    res = results[name]
    assert "error" not in res, res.get("error")
    assert res["backend"] == "labelsmooth.backends.triton"  # no silent fallback to reference
    logits64, target, weight64 = ce_inputs(spec)
    dtype = getattr(torch, spec["dtype"])
    x = logits64.to(dtype).double().requires_grad_(True)  # the oracle sees the rounded logits
    weight = None if spec["weight"] is None else weight64.float().double()
    ref = oracle_loss(x, target, weight, eps=spec["eps"], convention=spec["convention"],
                      weight_mode=spec["weight"] or "class", reduction=spec["reduction"],
                      z_loss=spec["z_loss"])
    (want,) = torch.autograd.grad(ref, x, res["grad_output"].double().reshape(ref.shape))
    loss, grad = res["loss"], res["grad"]
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert grad.dtype == dtype
    # Bring the worker's layout back to (N, K) rows.
    if res["dim"] == 1 and grad.dim() == 3:
        grad = grad.transpose(1, 2).reshape(-1, spec["k"])
        loss_rows = loss
    else:
        grad = grad.reshape(-1, spec["k"])
        loss_rows = loss
    assert loss_rows.numel() == ref.numel()
    _close(loss_rows.reshape(ref.shape), ref.detach(), spec["dtype"])
    _close(grad, want, spec["dtype"])
    if spec.get("all_ignored"):
        assert float(loss) == 0.0 and float(grad.abs().max()) == 0.0
    if spec.get("neginf"):
        assert torch.isfinite(grad).all() and torch.isfinite(loss).all()
    ignored = (target.reshape(-1) == -100)
    assert float(grad[ignored].abs().max()) == 0.0 if ignored.any() else True


@pytest.mark.parametrize("name", list(LINEAR_CASES))
def test_linear_triton_step(results, name):
    spec = LINEAR_CASES[name]
    res = results[name]
    assert "error" not in res, res.get("error")
    assert res["backend"] == "triton:_triton_step"
    hidden64, classifier64, bias64, target, weight64 = linear_inputs(spec)
    dtype = getattr(torch, spec["dtype"])
    leaves = [t.to(dtype).double().requires_grad_(True) for t in (hidden64, classifier64, bias64)]
    if not spec["bias"]:
        leaves = leaves[:2]
    weight = None if spec["weight"] is None else weight64.float().double()
    ref = oracle_linear(leaves[0], leaves[1], target, leaves[2] if spec["bias"] else None,
                        weight=weight, eps=spec["eps"], convention=spec["convention"],
                        weight_mode=spec["weight"] or "class", reduction=spec["reduction"],
                        z_loss=spec["z_loss"])
    want = torch.autograd.grad(ref, leaves, res["grad_output"].double())
    _close(res["loss"], ref.detach(), spec["dtype"])
    assert len(res["grads"]) == len(want)
    for g, r in zip(res["grads"], want, strict=True):
        assert g.dtype == dtype
        _close(g, r, spec["dtype"])


def test_cpu_without_interpreter_falls_back_to_reference():
    from labelsmooth import _dispatch
    from labelsmooth.backends.triton import _kernels, unsupported
    from labelsmooth.functional import prepare

    if _kernels.interpreting():  # this whole process was started under the interpreter
        return
    x = torch.randn(4, 5)
    flat, t, w, opts, _ = prepare(x, torch.tensor([0, 1, 2, 3]), None, ignore_index=-100,
                                  reduction="mean", label_smoothing=0.1, convention="uniform",
                                  weight_mode="class", dim=1, z_loss=0.0)
    assert "TRITON_INTERPRET" in unsupported(flat, t, w, opts)
    assert _dispatch.resolve("triton", flat, t, w, opts).__name__ == "labelsmooth.backends.reference"
    probs = torch.softmax(torch.randn(4, 5), 1)
    assert "probability" in unsupported(flat, probs, None, opts)


# ----------------------------------------------------------------------------------- GPU (compiled)


@pytest.mark.parametrize("name", [n for n in CE_CASES if not n.startswith("ce-dim")])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_cross_entropy_kernel(name):
    spec = CE_CASES[name]
    logits64, target, weight64 = ce_inputs(spec)
    dtype = getattr(torch, spec["dtype"])
    x = logits64.to(dtype)
    weight = None if spec["weight"] is None else weight64.float()
    kw = dict(weight_mode=spec["weight"] or "class", reduction=spec["reduction"],
              label_smoothing=spec["eps"], convention=spec["convention"], z_loss=spec["z_loss"])
    leaf = x.cuda().requires_grad_(True)
    loss = labelsmooth.cross_entropy(leaf, target.cuda(), None if weight is None else weight.cuda(),
                                     backend="triton", **kw)
    (grad,) = torch.autograd.grad(loss, leaf, torch.ones_like(loss))
    xr = x.double().requires_grad_(True)
    ref = oracle_loss(xr, target, None if weight is None else weight.double(), eps=spec["eps"],
                      convention=spec["convention"], weight_mode=spec["weight"] or "class",
                      reduction=spec["reduction"], z_loss=spec["z_loss"])
    (want,) = torch.autograd.grad(ref, xr, torch.ones_like(ref))
    _close(loss.cpu(), ref.detach(), spec["dtype"])
    _close(grad.cpu(), want, spec["dtype"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_auto_is_triton_and_large_rows():
    from labelsmooth import _dispatch
    from labelsmooth.functional import prepare

    x = torch.randn(64, 50_000, device="cuda", dtype=torch.bfloat16) * 4
    t = torch.randint(0, 50_000, (64,), device="cuda")
    flat, ft, w, opts, _ = prepare(x, t, None, ignore_index=-100, reduction="mean",
                                   label_smoothing=0.1, convention="uniform", weight_mode="class",
                                   dim=1, z_loss=0.0)
    assert _dispatch.resolve("auto", flat, ft, w, opts).__name__ == "labelsmooth.backends.triton"
    leaf = x.clone().requires_grad_(True)
    loss = labelsmooth.cross_entropy(leaf, t, label_smoothing=0.1, inplace_backward=True)
    loss.backward()
    xr = x.double().cpu().requires_grad_(True)
    ref = oracle_loss(xr, t.cpu(), eps=0.1)
    ref.backward()
    _close(loss.cpu(), ref.detach(), "bfloat16")
    _close(leaf.grad.cpu(), xr.grad, "bfloat16")
