"""Benchmark of :func:`labelsmooth.linear_cross_entropy` against ``F.linear`` + ``F.cross_entropy``.

``run_linear(args)`` is the entry for ``labelsmooth bench --op linear``; ``add_arguments`` declares its
options. Times come from :mod:`torch.utils.benchmark` in this process (both providers, same inputs);
peak memory comes from a fresh subprocess per provider that resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``) after building the inputs and reads ``VmHWM`` after forward+backward.
Memory is reported as a fraction of the ``N x V`` fp32 logits, both raw and net of the gradients the
call must return (``dL/dhidden`` and ``dL/dclassifier``), which every provider allocates alike.

``--gpu-suite`` runs the GPU comparison (torch eager, torch.compile, Triton, Liger-Kernel when
installed) for ``cross_entropy`` and ``linear_cross_entropy`` and prints times, ratios and the fraction
of the bandwidth floor (one read of the logits + one write of their gradient at the measured copy
bandwidth). It needs CUDA and Triton.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PROVIDERS = ("torch", "labelsmooth")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=8192, help="tokens N (default 8192)")
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size H (default 1024)")
    parser.add_argument("--vocab", type=int, default=32768, help="classes V (default 32768)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--chunk-size", type=int, default=None, help="tokens per chunk")
    parser.add_argument("--memory-budget", type=int, default=None, help="bytes of chunk logits")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per provider")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--gpu-suite", action="store_true", help="run the GPU comparison instead")


def _inputs(n: int, h: int, v: int, dtype: torch.dtype, device: str = "cpu", seed: int = 0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    hidden = (torch.randn(n, h, generator=gen) / h**0.5).to(device=device, dtype=dtype)
    classifier = torch.randn(v, h, generator=gen).to(device=device, dtype=dtype)
    target = torch.randint(0, v, (n,), generator=gen).to(device)
    hidden.requires_grad_(True)
    classifier.requires_grad_(True)
    return hidden, classifier, target


def _loss_fn(provider: str, eps: float, chunk_size: int | None, memory_budget: int | None,
             backend: str = "auto") -> Callable[..., torch.Tensor]:
    if provider == "torch":
        return lambda h, w, y: F.cross_entropy(F.linear(h, w).float(), y, label_smoothing=eps)
    if provider == "labelsmooth":
        from .linear import linear_cross_entropy

        return lambda h, w, y: linear_cross_entropy(h, w, y, label_smoothing=eps,
                                                    chunk_size=chunk_size,
                                                    memory_budget=memory_budget, backend=backend)
    raise ValueError(f"provider={provider!r} is not known; allowed: {', '.join(PROVIDERS)}")


def _fwd_bwd(fn: Callable[..., torch.Tensor], h: torch.Tensor, w: torch.Tensor,
             y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(fn(h, w, y), (h, w))


def time_providers(n: int, h: int, v: int, dtype: torch.dtype, eps: float, chunk_size: int | None,
                   memory_budget: int | None, repeats: int) -> dict[str, dict[str, float]]:
    """Median seconds of forward and forward+backward per provider, interleaved runs."""
    from torch.utils.benchmark import Timer

    hidden, classifier, target = _inputs(n, h, v, dtype)
    out: dict[str, dict[str, list[float]]] = {p: {"fwd": [], "fwd+bwd": []} for p in PROVIDERS}
    fns = {p: _loss_fn(p, eps, chunk_size, memory_budget) for p in PROVIDERS}
    for p in PROVIDERS:  # warm-up (one run each)
        _fwd_bwd(fns[p], hidden, classifier, target)
    for _ in range(repeats):
        for p in PROVIDERS:
            env = {"fn": fns[p], "h": hidden, "w": classifier, "y": target, "step": _fwd_bwd}
            with torch.no_grad():
                fwd = Timer("fn(h, w, y)", globals=env).timeit(1)
            both = Timer("step(fn, h, w, y)", globals=env).timeit(1)
            out[p]["fwd"].append(fwd.median)
            out[p]["fwd+bwd"].append(both.median)
    return {p: {k: statistics.median(vals) for k, vals in d.items()} for p, d in out.items()}


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_probe(provider: str, n: int, h: int, v: int, dtype_name: str, eps: float,
                 chunk_size: int | None, memory_budget: int | None) -> dict[str, int]:
    """Run in a fresh process: peak RSS over the inputs during one forward+backward, in bytes."""
    dtype = DTYPES[dtype_name]
    fn = _loss_fn(provider, eps, chunk_size, memory_budget)
    small = _inputs(64, 16, 128, dtype)  # load the kernels' libraries before measuring
    _fwd_bwd(fn, *small)
    del small
    hidden, classifier, target = _inputs(n, h, v, dtype)
    base = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (peak RSS) to the current RSS
    grads = _fwd_bwd(fn, hidden, classifier, target)
    peak = _rss_kib("VmHWM")
    grad_bytes = sum(g.numel() * g.element_size() for g in grads)
    return {"peak_extra": (peak - base) * 1024, "grad_bytes": grad_bytes}


def measure_memory(provider: str, n: int, h: int, v: int, dtype_name: str, eps: float,
                   chunk_size: int | None, memory_budget: int | None) -> dict[str, int]:
    """:func:`memory_probe` in a fresh interpreter (so earlier allocations do not count)."""
    code = ("import json, sys; from labelsmooth.bench_linear import memory_probe; "
            "print(json.dumps(memory_probe(*json.loads(sys.argv[1]))))")
    payload = json.dumps([provider, n, h, v, dtype_name, eps, chunk_size, memory_budget])
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", code, payload], capture_output=True, text=True,
                          env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe for {provider} failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_linear(n: int = 8192, h: int = 1024, v: int = 32768, dtype_name: str = "float32",
                 eps: float = 0.1, chunk_size: int | None = None, memory_budget: int | None = None,
                 repeats: int = 3, memory: bool = True, file: Any = None) -> list[dict[str, Any]]:
    """Time and measure both providers; print a table and return its rows."""
    file = file or sys.stdout
    dtype = DTYPES[dtype_name]
    times = time_providers(n, h, v, dtype, eps, chunk_size, memory_budget, repeats)
    logits_bytes = n * v * 4
    rows = []
    for p in PROVIDERS:
        row: dict[str, Any] = {"provider": p, **times[p],
                               "ratio": times[p]["fwd+bwd"] / times["torch"]["fwd+bwd"]}
        if memory:
            mem = measure_memory(p, n, h, v, dtype_name, eps, chunk_size, memory_budget)
            row["peak_extra/logits"] = mem["peak_extra"] / logits_bytes
            row["net_of_grads/logits"] = (mem["peak_extra"] - mem["grad_bytes"]) / logits_bytes
        rows.append(row)
    print(f"linear + cross-entropy, N={n} H={h} V={v} {dtype_name}, label_smoothing={eps}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; logits would be "
          f"{logits_bytes / 2**30:.2f} GiB", file=file)
    head = f"{'provider':<12} {'fwd s':>8} {'fwd+bwd s':>10} {'ratio':>6}"
    if memory:
        head += f" {'peak extra/logits':>18} {'net of grads/logits':>20}"
    print(head, file=file)
    for row in rows:
        line = f"{row['provider']:<12} {row['fwd']:>8.3f} {row['fwd+bwd']:>10.3f} {row['ratio']:>6.3f}"
        if memory:
            line += f" {row['peak_extra/logits']:>18.3f} {row['net_of_grads/logits']:>20.3f}"
        print(line, file=file)
    print("ratio = fwd+bwd time / torch's (F.linear + F.cross_entropy(label_smoothing)); memory "
          "from a fresh process per provider (peak RSS over the inputs)", file=file)
    return rows


def _copy_bandwidth(dev: str) -> float:
    """Bytes per second of a 1 GiB device-to-device copy (it reads and writes every byte once)."""
    import triton.testing

    buf = torch.empty(2**28, dtype=torch.float32, device=dev)
    dst = torch.empty_like(buf)
    copy_ms = triton.testing.do_bench(lambda: dst.copy_(buf), return_mode="median")
    return 2 * buf.numel() * 4 / (copy_ms * 1e-3)


def gpu_suite(file: Any = None, n: int = 8192, v: int = 131072, h: int = 4096) -> list[dict[str, Any]]:
    """The GPU comparison of issue 5 (bf16): cross_entropy at ``N x V`` and linear CE at ``H``.

    Providers: torch eager, ``torch.compile``, labelsmooth's Triton backend, Liger-Kernel (when
    installed). Times are medians of ``triton.testing.do_bench`` (CUDA events); peak memory is
    ``torch.cuda.max_memory_allocated`` over the inputs. Untested here: written on a CPU-only machine.
    """
    import importlib.util

    if not torch.cuda.is_available():
        raise ValueError("--gpu-suite needs a CUDA device (none is available here)")
    import triton.testing

    from .functional import cross_entropy
    from .linear import linear_cross_entropy

    file = file or sys.stdout
    dev = "cuda"
    eps = 0.1
    rows: list[dict[str, Any]] = []
    # Bandwidth: a device-to-device copy of 1 GiB reads and writes it once.
    bandwidth = _copy_bandwidth(dev)
    floor_ms = 2 * n * v * 2 / bandwidth * 1e3  # one bf16 read of the logits + one bf16 write
    logits_store = [torch.randn(n, v, device=dev, dtype=torch.bfloat16)]
    target = torch.randint(0, v, (n,), device=dev)

    def ce_case(name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        x = logits_store[0].clone().requires_grad_(True)

        def step() -> None:
            x.grad = None
            fn(x).backward()

        try:
            step()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            ms = triton.testing.do_bench(step, return_mode="median")
            peak = torch.cuda.max_memory_allocated() - base
        except Exception as exc:  # a provider failing is a row, not the end of the suite
            rows.append({"op": "cross_entropy", "provider": name, "error": repr(exc)[:80]})
            return
        rows.append({"op": "cross_entropy", "provider": name, "ms": ms, "peak_GiB": peak / 2**30,
                     "floor_x": ms / floor_ms})

    def eager(x: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(x.float(), target, label_smoothing=eps)

    ce_case("torch eager", eager)
    ce_case("torch.compile", torch.compile(eager))
    ce_case("labelsmooth triton",
            lambda x: cross_entropy(x, target, label_smoothing=eps, backend="triton"))
    ce_case("labelsmooth triton inplace",
            lambda x: cross_entropy(x, target, label_smoothing=eps, backend="triton",
                                    inplace_backward=True))
    liger = importlib.util.find_spec("liger_kernel") is not None
    if liger:
        from liger_kernel.transformers import LigerCrossEntropyLoss, LigerFusedLinearCrossEntropyLoss

        liger_ce = LigerCrossEntropyLoss(label_smoothing=eps)
        ce_case("liger", lambda x: liger_ce(x, target))
    logits_store.clear()
    hidden = torch.randn(n, h, device=dev, dtype=torch.bfloat16) / h**0.5
    weight = torch.randn(v, h, device=dev, dtype=torch.bfloat16)

    def lin_case(name: str, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        hx = hidden.clone().requires_grad_(True)
        wx = weight.clone().requires_grad_(True)

        def step() -> None:
            hx.grad = None
            wx.grad = None
            fn(hx, wx).backward()

        try:
            step()
            torch.cuda.synchronize()
            hx.grad = None
            wx.grad = None
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            ms = triton.testing.do_bench(step, return_mode="median")
            peak = torch.cuda.max_memory_allocated() - base
        except Exception as exc:
            rows.append({"op": "linear_ce", "provider": name, "error": repr(exc)[:80]})
            return
        rows.append({"op": "linear_ce", "provider": name, "ms": ms, "peak_GiB": peak / 2**30})

    lin_case("torch eager", lambda a, b: F.cross_entropy(F.linear(a, b).float(), target,
                                                         label_smoothing=eps))
    lin_case("labelsmooth triton", lambda a, b: linear_cross_entropy(a, b, target,
                                                                   label_smoothing=eps))
    if liger:
        liger_lin = LigerFusedLinearCrossEntropyLoss(label_smoothing=eps)
        lin_case("liger fused", lambda a, b: liger_lin(b, a, target))
    print(f"GPU suite on {torch.cuda.get_device_name()}: bf16, label_smoothing={eps}; copy "
          f"bandwidth {bandwidth / 1e12:.2f} TB/s, floor {floor_ms:.3f} ms for CE {n}x{v}; linear CE "
          f"H={h}; Liger {'installed' if liger else 'not installed'}", file=file)
    print(f"{'op':<14} {'provider':<28} {'ms':>9} {'peak GiB':>9} {'x floor':>8} {'vs eager':>9}",
          file=file)
    eager_ms = {r["op"]: r["ms"] for r in rows if r["provider"] == "torch eager" and "ms" in r}
    for r in rows:
        if "error" in r:
            print(f"{r['op']:<14} {r['provider']:<28} error: {r['error']}", file=file)
            continue
        floor = f"{r['floor_x']:>8.2f}" if "floor_x" in r else f"{'':>8}"
        speed = eager_ms.get(r["op"], float("nan")) / r["ms"]
        print(f"{r['op']:<14} {r['provider']:<28} {r['ms']:>9.3f} {r['peak_GiB']:>9.3f} {floor} "
              f"{speed:>8.2f}x", file=file)
    return rows


def run_linear(args: argparse.Namespace) -> int:
    """``labelsmooth bench --op linear`` (reads the options of :func:`add_arguments`)."""
    if getattr(args, "gpu_suite", False):
        gpu_suite()
        return 0
    for name in ("n", "hidden", "vocab", "repeats"):
        value = getattr(args, name, 1)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name}={value!r} is out of range; allowed: an int >= 1")
    bench_linear(n=args.n, h=args.hidden, v=args.vocab, dtype_name=getattr(args, "dtype", "float32"),
                 eps=getattr(args, "label_smoothing", 0.1), chunk_size=getattr(args, "chunk_size", None),
                 memory_budget=getattr(args, "memory_budget", None), repeats=args.repeats,
                 memory=not getattr(args, "no_memory", False))
    return 0


run = run_linear


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labelsmooth.bench_linear",
                                     description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_linear(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
