"""linear_cross_entropy (chunked torch path on CPU) against the float64 oracle, gradients included."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import labelsmooth
from _ls_oracle import oracle_linear
from labelsmooth import linear as lin
from labelsmooth.linear import chunk_rows, linear_cross_entropy

N, H, V = 37, 8, 50


def _make(dtype=torch.float32, bias=True, n=N, h=H, v=V, ignore_every=5, seed=0, shape=None):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen)
    classifier = torch.randn(v, h, generator=gen) / h**0.5
    b = torch.randn(v, generator=gen) if bias else None
    target = torch.randint(0, v, (n,), generator=gen)
    if ignore_every:
        target[::ignore_every] = -100
    weight = torch.rand(v, generator=gen) + 0.5
    if shape is not None:
        hidden = hidden.reshape(*shape, h)
        target = target.reshape(shape)
    leaves = [t.to(dtype).requires_grad_(True) if t is not None else None
              for t in (hidden, classifier, b)]
    return leaves, target, weight


def _grads(loss, leaves, grad_output):
    wanted = [t for t in leaves if t is not None]
    return torch.autograd.grad(loss, wanted, grad_output)


def _check(got, want, dtype):
    if dtype == torch.float64:
        tol = 1e-10
    elif dtype == torch.float32:
        tol = 2e-5
    else:
        tol = 3e-2
    scale = max(float(want.detach().abs().max()), 1.0)
    err = float((got.detach().double() - want.detach()).abs().max())
    assert err <= tol * scale, f"max error {err} > {tol} * {scale}"


def _compare(dtype, reduction, weight_mode, convention, use_bias, z_loss, chunk_size=7,
             eps=0.1, shape=None, backend="cpu"):
    leaves, target, weight = _make(dtype, use_bias, shape=shape)
    w = None if weight_mode is None else weight
    kw = dict(weight=w, weight_mode=weight_mode or "class", reduction=reduction,
              label_smoothing=eps, convention=convention, z_loss=z_loss)
    loss = linear_cross_entropy(leaves[0], leaves[1], target, leaves[2], chunk_size=chunk_size,
                                backend=backend, **kw)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    gen = torch.Generator().manual_seed(1)
    grad_output = torch.rand(loss.shape, generator=gen) + 0.5
    got = _grads(loss, leaves, grad_output.to(loss.dtype))
    ref_leaves = [t.detach().double().requires_grad_(True) if t is not None else None
                  for t in leaves]
    ref = oracle_linear(ref_leaves[0], ref_leaves[1], target, ref_leaves[2], weight=w,
                        eps=eps, convention=convention, weight_mode=weight_mode or "class",
                        reduction=reduction, z_loss=z_loss)
    want = _grads(ref, ref_leaves, grad_output.double())
    assert loss.shape == ref.shape
    _check(loss, ref.detach(), dtype)
    for g, r, leaf in zip(got, want, [t for t in leaves if t is not None], strict=True):
        assert g.dtype == leaf.dtype and g.shape == leaf.shape
        _check(g, r, dtype)


MATRIX = list(itertools.product(
    ("mean", "sum", "none"), (None, "class", "sample"), ("uniform", "non_target"), (True, False)))


@pytest.mark.parametrize(("reduction", "weight_mode", "convention", "use_bias"), MATRIX)
def test_parity_fp32(reduction, weight_mode, convention, use_bias):
    _compare(torch.float32, reduction, weight_mode, convention, use_bias, z_loss=0.0)


@pytest.mark.parametrize(("reduction", "weight_mode"),
                         list(itertools.product(("mean", "sum", "none"), (None, "class", "sample"))))
def test_parity_z_loss_fp64(reduction, weight_mode):
    _compare(torch.float64, reduction, weight_mode, "uniform", True, z_loss=0.01)


@pytest.mark.parametrize(("reduction", "weight_mode", "use_bias"),
                         list(itertools.product(("mean", "none"), (None, "class"), (True, False))))
def test_parity_bf16(reduction, weight_mode, use_bias):
    _compare(torch.bfloat16, reduction, weight_mode, "non_target", use_bias, z_loss=0.001)


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 29, 30, 31, 1000])
def test_chunk_sizes_that_do_not_divide_n(chunk_size):
    # 37 rows, 8 ignored: 29 kept rows go through the chunks.
    _compare(torch.float64, "mean", "class", "uniform", True, z_loss=0.01, chunk_size=chunk_size)


def test_no_smoothing_and_full_smoothing():
    _compare(torch.float64, "sum", None, "uniform", True, 0.0, eps=0.0)
    _compare(torch.float64, "sum", "class", "uniform", False, 0.0, eps=1.0)


def test_batched_hidden_shape():
    _compare(torch.float64, "none", "sample", "uniform", True, 0.0, shape=(37, 1))
    leaves, target, _ = _make(torch.float64, shape=(37,))
    hidden = leaves[0].detach().reshape(1, 37, H)
    out = linear_cross_entropy(hidden, leaves[1], target.reshape(1, 37), reduction="none")
    assert out.shape == (1, 37)


def test_reference_backend_matches_chunked():
    leaves, target, weight = _make(torch.float64)
    a = linear_cross_entropy(*leaves[:2], target, leaves[2], weight=weight, label_smoothing=0.2,
                             backend="reference")
    b = linear_cross_entropy(*leaves[:2], target, leaves[2], weight=weight, label_smoothing=0.2,
                             chunk_size=5)
    assert torch.allclose(a, b, rtol=1e-12, atol=0)


def test_known_value_two_classes():
    # logits z = (0, log 3) for one row, target 1, eps = 0.2 uniform:
    # q = (0.1, 0.9), lse = log 4, loss = log 4 - 0.9 log 3.
    hidden = torch.tensor([[1.0]], dtype=torch.float64)
    classifier = torch.tensor([[0.0], [math.log(3.0)]], dtype=torch.float64)
    loss = linear_cross_entropy(hidden, classifier, torch.tensor([1]), label_smoothing=0.2)
    assert abs(float(loss) - (math.log(4.0) - 0.9 * math.log(3.0))) < 1e-15


def test_ignored_rows_cost_no_matmul_and_chunks_bound_rows(monkeypatch):
    calls = []
    real = F.linear

    def spy(x, w, b=None):
        calls.append(x.shape[0])
        return real(x, w, b)

    monkeypatch.setattr(lin.F, "linear", spy)
    leaves, target, _ = _make(torch.float32)
    kept = int((target != -100).sum())
    loss = linear_cross_entropy(leaves[0], leaves[1], target, leaves[2], label_smoothing=0.1,
                                chunk_size=6)
    loss.backward()
    assert sum(calls) == kept and max(calls) == 6 and kept == 29
    assert torch.count_nonzero(leaves[0].grad[::5]) == 0


def test_fully_ignored_mean_is_zero_with_zero_grads():
    leaves, target, _ = _make(torch.float32)
    target.fill_(-100)
    loss = linear_cross_entropy(leaves[0], leaves[1], target, leaves[2], label_smoothing=0.1)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert all(float(t.grad.abs().max()) == 0.0 for t in leaves)


def test_empty_input():
    hidden = torch.zeros(0, H, requires_grad=True)
    classifier = torch.randn(V, H, requires_grad=True)
    loss = linear_cross_entropy(hidden, classifier, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(classifier.grad.abs().max()) == 0.0


def test_grad_output_scales_and_second_backward_raises():
    leaves, target, _ = _make(torch.float64)
    loss = linear_cross_entropy(leaves[0], leaves[1], target, leaves[2], label_smoothing=0.1)
    (3.0 * loss).backward(retain_graph=True)
    leaves2 = [t.detach().clone().requires_grad_(True) for t in leaves]
    linear_cross_entropy(leaves2[0], leaves2[1], target, leaves2[2], label_smoothing=0.1).backward()
    for a, b in zip(leaves, leaves2, strict=True):
        assert torch.allclose(a.grad, 3.0 * b.grad, rtol=1e-12, atol=1e-15)
    with pytest.raises(RuntimeError, match="already run"):
        loss.backward()


def test_only_some_inputs_require_grad():
    leaves, target, _ = _make(torch.float64)
    hidden = leaves[0].detach()
    loss = linear_cross_entropy(hidden, leaves[1], target, label_smoothing=0.1)
    (g,) = torch.autograd.grad(loss, leaves[1])
    ref_w = leaves[1].detach().requires_grad_(True)
    ref = oracle_linear(hidden, ref_w, target, eps=0.1)
    (want,) = torch.autograd.grad(ref, ref_w)
    assert torch.allclose(g, want, rtol=1e-10, atol=1e-14)
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy(hidden, leaves[1], target, label_smoothing=0.1),
                              ref.detach(), rtol=1e-12, atol=0)


def test_chunk_rows_from_budget():
    cpu = torch.device("cpu")
    assert chunk_rows(8192, 32768, torch.float32, cpu) == 512  # 64 MiB / (32768 * 4 B)
    assert chunk_rows(8192, 32768, torch.bfloat16, cpu) == 341  # 64 MiB / (32768 * 6 B)
    assert chunk_rows(100, 10, torch.float32, cpu, memory_budget=120) == 3
    assert chunk_rows(100, 10, torch.float32, cpu, memory_budget=1) == 1
    assert chunk_rows(10, 10, torch.float32, cpu, chunk_size=64) == 10


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"chunk_size": 0}, ValueError, "chunk_size=0"),
    ({"chunk_size": 2.5}, TypeError, "chunk_size"),
    ({"memory_budget": -1}, ValueError, "memory_budget=-1"),
    ({"label_smoothing": 1.5}, ValueError, "label_smoothing"),
    ({"reduction": "avg"}, ValueError, "reduction"),
    ({"weight_mode": "x"}, ValueError, "weight_mode"),
    ({"backend": "fast"}, ValueError, "backend"),
    ({"weight": torch.ones(3)}, ValueError, "weight has shape"),
])
def test_bad_keywords(kwargs, error, match):
    leaves, target, _ = _make(torch.float32)
    with pytest.raises(error, match=match):
        linear_cross_entropy(leaves[0], leaves[1], target, leaves[2], **kwargs)


def test_bad_tensors():
    leaves, target, _ = _make(torch.float32)
    hidden, classifier, bias = leaves
    with pytest.raises(ValueError, match="probability targets"):
        linear_cross_entropy(hidden, classifier, torch.rand(N, V))
    with pytest.raises(ValueError, match="classifier has shape"):
        linear_cross_entropy(hidden, classifier.t(), target)
    with pytest.raises(ValueError, match="dtype and device"):
        linear_cross_entropy(hidden, classifier.double(), target)
    with pytest.raises(ValueError, match="bias has shape"):
        linear_cross_entropy(hidden, classifier, target, bias[:3])
    with pytest.raises(ValueError, match="target has shape"):
        linear_cross_entropy(hidden, classifier, target[:3])
    with pytest.raises(IndexError, match="class id 50"):
        linear_cross_entropy(hidden, classifier, torch.full((N,), V))
    with pytest.raises(TypeError, match="hidden has dtype"):
        linear_cross_entropy(torch.ones(N, H, dtype=torch.long), classifier, target)


def test_non_target_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2"):
        linear_cross_entropy(torch.randn(3, 2), torch.randn(1, 2), torch.zeros(3, dtype=torch.long),
                             label_smoothing=0.1, convention="non_target")


def test_public_export_and_no_triton_import():
    assert labelsmooth.linear_cross_entropy is linear_cross_entropy
    code = ("import sys, torch, labelsmooth; labelsmooth.linear_cross_entropy("
            "torch.randn(4, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 3]), label_smoothing=0.1);"
            "print('triton' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ,
                              "PYTHONPATH": __import__("os").pathsep.join(sys.path)})
    assert out.stdout.strip() == "False"


def test_bench_linear_prints_both_providers():
    import io

    from labelsmooth.bench_linear import bench_linear

    buf = io.StringIO()
    rows = bench_linear(n=64, h=16, v=128, repeats=1, memory=False, file=buf)
    assert [r["provider"] for r in rows] == ["torch", "labelsmooth"]
    assert rows[0]["ratio"] == 1.0 and rows[1]["fwd+bwd"] > 0
    assert "labelsmooth" in buf.getvalue()


def test_triton_backend_refuses_cpu_without_interpreter():
    pytest.importorskip("triton")
    from labelsmooth.backends.triton import _kernels

    if _kernels.interpreting():  # the whole process runs the interpreter: nothing to refuse
        return
    leaves, target, _ = _make(torch.float32)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        linear_cross_entropy(leaves[0], leaves[1], target, backend="triton")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("dtype", "reduction", "weight_mode"), [
    (torch.float32, "mean", None), (torch.float32, "none", "class"), (torch.bfloat16, "mean", "class"),
    (torch.bfloat16, "sum", "sample")])
def test_gpu_triton_linear_matches_oracle(dtype, reduction, weight_mode):
    leaves, target, weight = _make(dtype, True, n=300, h=64, v=1000)
    cuda = [t.detach().cuda().requires_grad_(True) for t in leaves]
    w = None if weight_mode is None else weight.cuda()
    kw = dict(weight=w, weight_mode=weight_mode or "class", reduction=reduction,
              label_smoothing=0.1, z_loss=0.001)
    loss = linear_cross_entropy(cuda[0], cuda[1], target.cuda(), cuda[2], chunk_size=64,
                                backend="triton", **kw)
    go = torch.ones_like(loss)
    got = torch.autograd.grad(loss, cuda, go)
    ref_leaves = [t.detach().double().requires_grad_(True) for t in leaves]
    ref = oracle_linear(ref_leaves[0], ref_leaves[1], target, ref_leaves[2],
                        weight=None if w is None else weight, eps=0.1,
                        weight_mode=weight_mode or "class", reduction=reduction, z_loss=0.001)
    want = torch.autograd.grad(ref, ref_leaves, torch.ones_like(ref))
    _check(loss.cpu(), ref.detach(), dtype)
    for g, r in zip(got, want, strict=True):
        _check(g.cpu(), r, dtype)


def test_no_grad_forward_computes_no_gradients(monkeypatch):
    seen = []
    real = lin._chunk_loop

    def spy(*args, **kwargs):
        seen.append(args[5] is None)  # r: no row scale means no gradient is written
        return real(*args, **kwargs)

    monkeypatch.setattr(lin, "_chunk_loop", spy)
    leaves, target, _ = _make(torch.float64)
    with torch.no_grad():
        loss = linear_cross_entropy(leaves[0], leaves[1], target, leaves[2], label_smoothing=0.1)
    ref = oracle_linear(*[t.detach() for t in leaves[:2]], target, leaves[2].detach(), eps=0.1)
    assert seen == [True] and abs(float(loss) - float(ref)) < 1e-12
    linear_cross_entropy(leaves[0], leaves[1], target, leaves[2], label_smoothing=0.1)
    assert seen == [True, False]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_gpu_suite_without_cuda_is_a_clear_error():
    import argparse

    from labelsmooth.bench_linear import run_linear

    with pytest.raises(ValueError, match="needs a CUDA device"):
        run_linear(argparse.Namespace(gpu_suite=True))


def test_bench_op_linear_is_wired_into_the_cli(capsys):
    from labelsmooth.cli import main

    assert main(["bench", "--op", "linear", "--shape", "64x128", "--hidden", "16", "--repeats", "1",
                 "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert "N=64 H=16 V=128" in out and "labelsmooth" in out
    assert main(["bench", "--op", "linear", "--dtype", "fp64", "--no-memory"]) == 2
