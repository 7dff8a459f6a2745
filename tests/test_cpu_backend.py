"""The fused ``cpu`` backend against ``reference``: values and gradients over the whole matrix, for the
native kernel and for its pure-torch fallback (the path of a machine without a C++ compiler)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

import labelsmooth as ls
from labelsmooth import _dispatch, cli
from labelsmooth.backends import _cpu_build, cpu, reference

# (rtol, atol) for the loss and the input gradient, per input dtype: the one tolerance table.
TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 1e-6),
    torch.float16: (2e-3, 2e-5),
    torch.bfloat16: (1.6e-2, 1e-4),
}
DTYPES = list(TOLERANCES)
N, K = 9, 37  # 37 classes: two 16-wide vector steps and a scalar tail


@pytest.fixture(params=["native", "fallback"])
def impl(request, monkeypatch):
    """Run the test through the compiled kernel, then through the pure-torch chunked path."""
    if request.param == "fallback":
        monkeypatch.setattr(_cpu_build, "library", lambda: None)
        monkeypatch.setattr(cpu, "CHUNK_ELEMENTS", 3 * K)  # several chunks even for small inputs
    elif shutil.which("g++") or shutil.which("c++"):
        assert _cpu_build.library() is not None, _cpu_build.build_info()
    return request.param


def _inputs(dtype, n=N, k=K, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(n, k, generator=gen, dtype=torch.float64)).to(dtype)
    t = torch.randint(0, k, (n,), generator=gen)
    return x, t


def _run(backend, x, target, weight=None, grad_out=None, **kw):
    xx = x.detach().clone().requires_grad_()
    loss = ls.cross_entropy(xx, target, weight, backend=backend, **kw)
    g = torch.ones_like(loss) if grad_out is None else grad_out.reshape(loss.shape)
    (loss * g).sum().backward()
    return loss.detach(), xx.grad


def _close(actual, expected, dtype):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol,
                               equal_nan=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("convention", ["uniform", "non_target"])
@pytest.mark.parametrize("weights", [None, "class", "sample"])
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("z_loss", [0.0, 0.05])
def test_parity_matrix(impl, dtype, reduction, convention, weights, ignore, z_loss):
    x, t = _inputs(dtype)
    if ignore:
        t[[2, 5]] = -100
    w = None if weights is None else torch.rand(K, generator=torch.Generator().manual_seed(1)) + 0.1
    g = torch.linspace(-1.0, 2.0, N) if reduction == "none" else torch.tensor(0.7)
    kw = dict(label_smoothing=0.15, convention=convention, reduction=reduction, z_loss=z_loss,
              weight_mode=weights or "class", grad_out=g)
    loss, grad = _run("cpu", x, t, w, **kw)
    ref_loss, ref_grad = _run("reference", x, t, w, **kw)
    assert loss.dtype == ref_loss.dtype and grad.dtype == dtype
    _close(loss, ref_loss, dtype)
    _close(grad, ref_grad, dtype)
    if ignore:
        assert torch.equal(grad[[2, 5]], torch.zeros(2, K, dtype=dtype))
        if reduction == "none":
            assert torch.equal(loss[[2, 5]], torch.zeros(2))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_no_grad_forward_matches_and_writes_nothing(impl, dtype):
    x, t = _inputs(dtype)
    before = x.clone()
    with torch.no_grad():
        loss = ls.cross_entropy(x, t, label_smoothing=0.1, reduction="none", backend="cpu",
                                inplace_backward=True)
    ref = ls.cross_entropy(x, t, label_smoothing=0.1, reduction="none", backend="reference")
    _close(loss, ref, dtype)
    assert torch.equal(x, before)  # no gradient was wanted: the logits are untouched


def test_ignore_index_that_is_a_class_id(impl):
    x, t = _inputs(torch.float32)
    t[:3] = 4
    kw = dict(ignore_index=4, label_smoothing=0.1)
    loss, grad = _run("cpu", x, t, **kw)
    ref_loss, ref_grad = _run("reference", x, t, **kw)
    _close(loss, ref_loss, torch.float32)
    _close(grad, ref_grad, torch.float32)
    assert torch.equal(grad[t == 4], torch.zeros(int((t == 4).sum()), K))


def test_probability_targets_fall_back_to_reference(impl):
    x, _ = _inputs(torch.float32)
    probs = torch.softmax(torch.randn(N, K, generator=torch.Generator().manual_seed(3)), dim=1)
    opts = ls.functional.prepare(x, probs, None, ignore_index=-100, reduction="mean",
                                 label_smoothing=0.1, convention="uniform", weight_mode="class",
                                 dim=1, z_loss=0.0)[3]
    assert cpu.unsupported(x, probs, None, opts) == "probability targets are not fused"
    assert _dispatch.resolve("cpu", x, probs, None, opts) is reference
    loss, grad = _run("cpu", x, probs, label_smoothing=0.1)
    ref_loss, ref_grad = _run("reference", x, probs, label_smoothing=0.1)
    assert torch.equal(loss, ref_loss) and torch.equal(grad, ref_grad)


def test_auto_picks_cpu_on_cpu():
    x, t = _inputs(torch.float32)
    opts = ls.functional.prepare(x, t, None, ignore_index=-100, reduction="mean",
                                 label_smoothing=0.1, convention="uniform", weight_mode="class",
                                 dim=1, z_loss=0.0)[3]
    assert _dispatch.resolve("auto", x, t, None, opts) is cpu


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_class_dim_1_on_nchw_and_dim_last(impl, reduction):
    gen = torch.Generator().manual_seed(4)
    x4 = torch.randn(2, 11, 3, 4, generator=gen)
    t4 = torch.randint(0, 11, (2, 3, 4), generator=gen)
    t4[0, 1, 2] = -100
    x3 = torch.randn(2, 5, 13, generator=gen)
    t3 = torch.randint(0, 13, (2, 5), generator=gen)
    for x, t, dim in ((x4, t4, 1), (x3, t3, -1)):
        g = torch.rand(t.shape, generator=gen) if reduction == "none" else None
        kw = dict(dim=dim, reduction=reduction, label_smoothing=0.2, grad_out=g)
        loss, grad = _run("cpu", x, t, **kw)
        ref_loss, ref_grad = _run("reference", x, t, **kw)
        assert loss.shape == ref_loss.shape and grad.shape == x.shape
        _close(loss, ref_loss, torch.float32)
        _close(grad, ref_grad, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_inplace_backward_reuses_the_logits_storage(impl, dtype):
    x, t = _inputs(dtype)
    ref_loss, ref_grad = _run("reference", x, t, label_smoothing=0.1, z_loss=0.01)
    leaf = x.clone().requires_grad_()
    loss = ls.cross_entropy(leaf, t, label_smoothing=0.1, z_loss=0.01, backend="cpu",
                            inplace_backward=True)
    _close(loss.detach(), ref_loss, dtype)
    loss.backward()
    _close(leaf.grad, ref_grad, dtype)
    assert leaf.grad.data_ptr() == leaf.data_ptr()  # the gradient lives in the logits' storage
    assert torch.equal(leaf.detach(), leaf.grad)  # ... so the logits were consumed


def test_module_with_inplace_backward(impl):
    x, t = _inputs(torch.float32)
    w = torch.linspace(0.5, 1.5, K)
    _, ref_grad = _run("reference", x, t, w, label_smoothing=0.1, weight_mode="sample")
    module = ls.LabelSmoothingCrossEntropy(w, label_smoothing=0.1, weight_mode="sample",
                                           inplace_backward=True, backend="cpu")
    leaf = x.clone().requires_grad_()
    module(leaf, t).backward()
    _close(leaf.grad, ref_grad, torch.float32)
    assert leaf.grad.data_ptr() == leaf.data_ptr()


def test_inplace_backward_through_a_non_leaf(impl):
    x, t = _inputs(torch.float32)
    _, ref_grad = _run("reference", 2 * x, t, label_smoothing=0.1)
    leaf = x.clone().requires_grad_()
    ls.cross_entropy(leaf * 2, t, label_smoothing=0.1, backend="cpu",
                     inplace_backward=True).backward()
    _close(leaf.grad, 2 * ref_grad, torch.float32)


def test_second_backward_recomputes_and_inplace_refuses(impl):
    x, t = _inputs(torch.float32)
    _, ref_grad = _run("reference", x, t, label_smoothing=0.1)
    leaf = x.clone().requires_grad_()
    loss = ls.cross_entropy(leaf, t, label_smoothing=0.1, backend="cpu")
    loss.backward(retain_graph=True)
    (3 * loss).backward()
    _close(leaf.grad, 4 * ref_grad, torch.float32)
    loss = ls.cross_entropy(x.clone().requires_grad_(), t, backend="cpu", inplace_backward=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace_backward=True"):
        loss.backward()


@pytest.mark.parametrize("weights", [None, "class", "sample"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fp64_gradcheck(impl, weights, reduction):
    x, t = _inputs(torch.float64, n=5, k=7)
    t[1] = -100
    w = None if weights is None else torch.linspace(0.5, 2.0, 7, dtype=torch.float64)
    leaf = x.clone().requires_grad_()

    def f(z):
        return ls.cross_entropy(z, t, w, label_smoothing=0.2, z_loss=0.1, reduction=reduction,
                                weight_mode=weights or "class", backend="cpu")

    assert torch.autograd.gradcheck(f, (leaf,))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_minus_inf_logits(impl, dtype):
    x, t = _inputs(dtype)
    x[0, (t[0] + 1) % K] = float("-inf")  # a masked class on a kept row
    x[1, :] = float("-inf")  # a fully masked row, ignored
    t[1] = -100
    for eps in (0.0, 0.1):
        kw = dict(label_smoothing=eps, reduction="none")
        loss, grad = _run("cpu", x, t, **kw)
        ref_loss, ref_grad = _run("reference", x, t, **kw)
        assert not loss.isnan().any() and torch.isfinite(grad).all()
        assert loss[0].item() == (math.inf if eps > 0 else ref_loss[0].item())
        _close(loss[1:], ref_loss[1:], dtype)
        _close(grad, ref_grad, dtype)
        assert torch.equal(grad[1], torch.zeros(K, dtype=dtype))


def test_zero_weight_on_a_masked_class_stays_finite(impl):
    x, t = _inputs(torch.float32)
    t[t == 3] = 4
    x[:, 3] = float("-inf")
    w = torch.ones(K)
    w[3] = 0.0
    loss, grad = _run("cpu", x, t, w, label_smoothing=0.1)
    ref_loss, ref_grad = _run("reference", x, t, w, label_smoothing=0.1)
    assert math.isfinite(loss.item())
    _close(loss, ref_loss, torch.float32)
    _close(grad, ref_grad, torch.float32)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_and_fully_ignored(impl, reduction):
    empty_x, empty_t = torch.randn(0, K), torch.zeros(0, dtype=torch.long)
    loss, grad = _run("cpu", empty_x, empty_t, label_smoothing=0.1, reduction=reduction)
    assert loss.shape == ((0,) if reduction == "none" else ())
    assert grad.shape == (0, K)
    if reduction != "none":
        assert loss.item() == 0.0
    x, t = _inputs(torch.float32)
    t[:] = -100
    loss, grad = _run("cpu", x, t, label_smoothing=0.1, reduction=reduction, z_loss=0.1)
    assert torch.equal(loss, torch.zeros_like(loss)) and torch.equal(grad, torch.zeros_like(grad))


def test_out_of_range_target_raises_even_without_validation(impl):
    x, t = _inputs(torch.float32)
    t[3] = K
    with pytest.raises(IndexError, match=f"class id {K}"):
        ls.cross_entropy(x.requires_grad_(), t, backend="cpu", validate=False)


def test_no_compiler_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(_cpu_build, "_compiler", lambda: None)
    _cpu_build.reset()
    try:
        x, t = _inputs(torch.float32)
        with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
            loss, grad = _run("cpu", x, t, label_smoothing=0.1)
        assert _cpu_build.library() is None and "compiler" in _cpu_build.build_info().error
        ref_loss, ref_grad = _run("reference", x, t, label_smoothing=0.1)
        _close(loss, ref_loss, torch.float32)
        _close(grad, ref_grad, torch.float32)
    finally:
        _cpu_build.reset()


def test_env_var_disables_the_native_kernel(monkeypatch):
    monkeypatch.setenv(_cpu_build.NATIVE_ENV, "0")
    _cpu_build.reset()
    try:
        with pytest.warns(RuntimeWarning, match=_cpu_build.NATIVE_ENV):
            assert _cpu_build.library() is None
    finally:
        _cpu_build.reset()


def test_kernel_build_is_cached(tmp_path, monkeypatch):
    if _cpu_build._compiler() is None:
        pytest.fail("this test needs a C++ compiler; the fallback is tested above")
    monkeypatch.setenv(_cpu_build.CACHE_ENV, str(tmp_path))
    path, seconds, cached = _cpu_build._build(_cpu_build._compiler())
    assert not cached and seconds > 0 and path.parent == tmp_path
    path2, seconds2, cached2 = _cpu_build._build(_cpu_build._compiler())
    assert cached2 and path2 == path and seconds2 == pytest.approx(seconds)


def test_bench_quick_smoke(tmp_path, capsys):
    out = tmp_path / "rows.json"
    code = cli.main(["bench", "--quick", "--provider", "cpu", "--shape", "64x100", "--dtype",
                     "fp32", "--repeats", "1", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "vs torch" in text and "64x100" in text
    data = json.loads(out.read_text())
    rows = {(r["provider"], r["pass"]): r for r in data["rows"]}
    assert set(rows) == {(p, m) for p in ("torch", "cpu") for m in
                         ("inference", "forward", "backward", "forward+backward")}
    assert rows[("torch", "forward+backward")]["speedup_vs_torch"] == pytest.approx(1.0)
    assert rows[("cpu", "forward+backward")]["peak_mem_over_logits"] is not None


def test_bench_rejects_a_bad_shape(capsys):
    assert cli.main(["bench", "--shape", "12by4"]) == 2
    assert "--shape='12by4'" in capsys.readouterr().err
