"""``labelsmooth bench``: time and memory of every loss provider, as ratios measured in one run.

For each configuration (shape ``N x V``, dtype) and pass, every provider is timed with
``torch.utils.benchmark.Timer`` (all of torch's threads), alternating provider after provider for
``--repeats`` rounds after one warm-up call each; the median is reported with

* ``vs torch``: torch eager's median time divided by the provider's (> 1 is faster);
* ``/ exp``: the provider's time divided by that of one ``torch.exp`` over the logits, the floor of a
  one-pass fused loss;
* ``mem``: peak extra resident memory divided by the logits' size. Each provider runs in a fresh
  subprocess that first builds the inputs and warms up; the peak resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs`` before each measured phase, or ``ru_maxrss`` where that is unavailable)
  minus the resident set just before the phase is what the phase really took from the allocator. The
  child runs with ``MALLOC_MMAP_THRESHOLD_`` set so that freed tensors go back to the OS.

Passes: ``inference`` (forward under ``no_grad``), ``forward`` (logits require grad),
``backward`` (``forward+backward`` minus ``forward``: derived, not timed alone) and
``forward+backward``. The ``mem`` of ``backward`` and ``forward+backward`` is the peak over both.

Providers live in :data:`PROVIDERS` (name -> setup function returning a loss function, or ``None``
where the provider does not apply, e.g. a GPU kernel on a CPU run) and inputs in :data:`OPS`, so GPU
kernels and the fused linear loss (``--op linear``) can be added without touching the harness.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

SMOOTHING = 0.1
DEFAULT_SHAPES = ("8192x1000", "4096x32768", "2048x131072")
QUICK_SHAPES = ("256x1000", "32x8192")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
PASSES = ("inference", "forward", "backward", "forward+backward")


@dataclass(frozen=True)
class Case:
    """One configuration: ``n x v`` logits of ``dtype`` on ``device``, for operation ``op``."""

    n: int
    v: int
    dtype: str
    device: str = "cpu"
    op: str = "ce"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def logits_bytes(self) -> int:
        return self.n * self.v * self.torch_dtype.itemsize


@dataclass
class Inputs:
    """``grad``: tensors that get gradients (fresh leaves per call); ``rest``: the other arguments."""

    grad: list[torch.Tensor]
    rest: list[torch.Tensor] = field(default_factory=list)


LossFn = Callable[..., torch.Tensor]
Setup = Callable[[Case], "LossFn | None"]


def _ce_inputs(case: Case) -> Inputs:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(case.n, case.v, generator=gen).to(case.torch_dtype).to(case.device)
    target = torch.randint(0, case.v, (case.n,), generator=gen).to(case.device)
    return Inputs([logits], [target])


#: op name -> input builder. The floor (one ``torch.exp``) is taken over the first ``grad`` tensor.
OPS: dict[str, Callable[[Case], Inputs]] = {"ce": _ce_inputs}


def _torch_eager(case: Case) -> LossFn:
    fn = torch.nn.functional.cross_entropy
    return lambda x, t: fn(x, t, label_smoothing=SMOOTHING)


_compiled: dict[tuple[str, str], LossFn] = {}
COMPILE_SECONDS: dict[str, float] = {}


def _torch_compile(case: Case) -> LossFn | None:
    if case.op != "ce":
        return None
    key = (case.device, case.dtype)
    if key not in _compiled:
        # dynamic shapes: one compilation per (dtype, grad mode), reused by every batch size.
        _compiled[key] = torch.compile(
            lambda x, t: torch.nn.functional.cross_entropy(x, t, label_smoothing=SMOOTHING),
            dynamic=True)
    return _compiled[key]


def _labelsmooth(backend: str, **extra: object) -> Setup:
    def setup(case: Case) -> LossFn | None:
        if case.op != "ce":
            return None
        from . import cross_entropy

        def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return cross_entropy(x, t, label_smoothing=SMOOTHING, backend=backend, **extra)

        fn.consumes_inputs = bool(extra.get("inplace_backward"))  # type: ignore[attr-defined]
        return fn

    return setup


#: ``reference`` builds several dense N x V temporaries (about 6-12x the logits) and is slow: it is
#: benchmarked only up to this many logits bytes (``--reference-max-mb`` changes it).
REFERENCE_MAX_BYTES = 64 << 20


def _reference(case: Case) -> LossFn | None:
    if case.logits_bytes > REFERENCE_MAX_BYTES:
        return None
    return _labelsmooth("reference")(case)


def _cpu_only(setup: Setup) -> Setup:
    return lambda case: setup(case) if case.device == "cpu" else None


#: provider name -> setup. ``torch`` is the baseline every ratio is taken against.
PROVIDERS: dict[str, Setup] = {
    "torch": _torch_eager,
    "torch.compile": _torch_compile,
    "reference": _reference,
    "cpu": _cpu_only(_labelsmooth("cpu")),
    "cpu+inplace": _cpu_only(_labelsmooth("cpu", inplace_backward=True)),
}


# ----------------------------------------------------------------------------- timing

def _statement(fn: LossFn, inputs: Inputs, mode: str) -> Callable[[], None]:
    if mode == "inference":
        def run() -> None:
            with torch.no_grad():
                fn(*inputs.grad, *inputs.rest)
    elif mode == "forward":
        def run() -> None:
            fn(*[x.detach().requires_grad_() for x in inputs.grad], *inputs.rest)
    elif mode == "forward+backward":
        def run() -> None:
            fn(*[x.detach().requires_grad_() for x in inputs.grad], *inputs.rest).backward()
    else:  # the floor
        def run() -> None:
            torch.exp(inputs.grad[0])
    return run


def _timer(run: Callable[[], None]) -> torch.utils.benchmark.Timer:
    from torch.utils.benchmark import Timer

    return Timer("run()", globals={"run": run}, num_threads=torch.get_num_threads())


def _warm_up(run: Callable[[], None], target_s: float) -> int:
    """Call ``run`` once (twice when fast); return the calls per measurement."""
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    if first > target_s:  # slow calls: one per measurement
        return 1
    start = time.perf_counter()
    run()
    return max(1, int(target_s / max(time.perf_counter() - start, 1e-6)))


def _first_call_overhead(run: Callable[[], None]) -> float:
    """Seconds of the first call beyond the second one, on a small batch (compilation)."""
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    start = time.perf_counter()
    run()
    return max(0.0, first - (time.perf_counter() - start))


def time_case(case: Case, providers: Sequence[str], repeats: int, target_s: float = 0.05
              ) -> tuple[dict[tuple[str, str], float], dict[str, float]]:
    """Median seconds per ``(provider, mode)`` (plus ``("exp", "floor")``), and each provider's
    first-call overhead (compile time) in seconds."""
    inputs = OPS[case.op](case)
    small = OPS[case.op](Case(8, case.v, case.dtype, case.device, case.op))
    jobs: list[tuple[str, str, torch.utils.benchmark.Timer, int]] = []
    first_call: dict[str, float] = {}
    for name in providers:
        fn = PROVIDERS[name](case)
        if fn is None:
            continue
        own = inputs
        if getattr(fn, "consumes_inputs", False):  # writes its gradient into the logits
            own = Inputs([x.clone() for x in inputs.grad], inputs.rest)
        for mode in ("inference", "forward", "forward+backward"):
            # compilation (torch.compile: once per dtype and grad mode, dynamic shapes) shows here
            overhead = _first_call_overhead(_statement(fn, small, mode))
            first_call[name] = first_call.get(name, 0.0) + overhead
            run = _statement(fn, own, mode)
            jobs.append((name, mode, _timer(run), _warm_up(run, target_s)))
    floor = _statement(PROVIDERS["torch"](case), inputs, "floor")  # type: ignore[arg-type]
    jobs.append(("exp", "floor", _timer(floor), _warm_up(floor, target_s)))
    samples: dict[tuple[str, str], list[float]] = {(n, m): [] for n, m, _, _ in jobs}
    for _ in range(repeats):  # alternate: one measurement of every job per round
        for name, mode, timer, number in jobs:
            samples[(name, mode)].append(timer.timeit(number).median)
    return {key: statistics.median(v) for key, v in samples.items()}, first_call


# ----------------------------------------------------------------------------- memory

def _rss_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def _phase_start() -> tuple[int, bool]:
    """Baseline KiB for a measured phase; resets the peak when the kernel allows it."""
    import gc

    gc.collect()
    base = _rss_kib("VmRSS")
    if base is not None and _reset_peak():
        return base, True
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, False


def _peak(exact: bool) -> int:
    if exact:
        return _rss_kib("VmHWM") or 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_child(provider: str, cases: list[Case]) -> list[dict[str, float | None]]:
    """In a fresh process: per case, peak extra KiB of inference, forward and forward+backward
    (the peak of forward+backward is over both; ``.grad`` counts, it is memory the step holds)."""
    results: list[dict[str, float | None]] = []
    for case in cases:
        fn = PROVIDERS[provider](case)
        if fn is None:
            results.append({})
            continue
        inputs = OPS[case.op](case)
        small = OPS[case.op](Case(8, case.v, case.dtype, case.device, case.op))
        with torch.no_grad():  # warm-up on a small batch: imports, thread pools, compilation
            fn(*small.grad, *small.rest)
        fn(*[x.detach().clone().requires_grad_() for x in small.grad], *small.rest).backward()
        del small
        base, exact = _phase_start()
        with torch.no_grad():
            fn(*inputs.grad, *inputs.rest)
        inference = _peak(exact) - base if exact else None
        leaves = [x.detach().clone().requires_grad_() for x in inputs.grad]
        base, exact = _phase_start()
        loss = fn(*leaves, *inputs.rest)
        forward = _peak(exact) - base
        loss.backward()
        total = _peak(exact) - base
        del loss, leaves
        results.append({"inference": inference, "forward": float(forward) if exact else None,
                        "forward+backward": float(total)})
    return results


def measure_memory(providers: Sequence[str], cases: list[Case], jobs: int
                   ) -> dict[str, list[dict[str, float | None]]]:
    """Run :func:`memory_child` in a fresh interpreter per provider, ``jobs`` at a time (resident
    memory is per process, so the numbers do not depend on how many run together)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    results: dict[str, list[dict[str, float | None]]] = {}
    pending = list(providers)
    while pending:
        batch, pending = pending[:jobs], pending[jobs:]
        running = []
        for provider in batch:
            payload = json.dumps({"provider": provider, "cases": [asdict(c) for c in cases]})
            running.append((provider, subprocess.Popen(
                [sys.executable, "-m", "labelsmooth.bench", "--memory-child", payload],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)))
        for name, proc in running:
            out, err = proc.communicate()
            if proc.returncode != 0:
                tail = (err or "").strip().splitlines()[-1:] or ["no output"]
                print(f"memory of {name}: child failed: {tail[0]}", file=sys.stderr)
                results[name] = [{} for _ in cases]
            else:
                results[name] = json.loads(out.strip().splitlines()[-1])
    return results


# ----------------------------------------------------------------------------- command line

def parse_shape(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--shape={text!r} is not allowed; allowed: NxV with positive integers, "
                         f"e.g. 4096x32768")
    return int(parts[0]), int(parts[1])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", action="append", metavar="NxV",
                        help=f"logits shape (repeatable); default {', '.join(DEFAULT_SHAPES)}")
    parser.add_argument("--dtype", action="append", choices=sorted(DTYPES),
                        help="logits dtype (repeatable); default fp32 and bf16")
    parser.add_argument("--provider", action="append", metavar="NAME",
                        help=f"provider (repeatable); default all of: {', '.join(PROVIDERS)} "
                             f"(--quick leaves out torch.compile)")
    parser.add_argument("--op", default="ce",
                        help=f"operation; one of: {', '.join((*OPS, 'linear'))} (linear: the fused "
                             f"linear + cross-entropy against F.linear + F.cross_entropy)")
    parser.add_argument("--hidden", type=int, default=1024, help="--op linear: hidden size H")
    parser.add_argument("--chunk-size", type=int, default=None, help="--op linear: tokens per chunk")
    parser.add_argument("--gpu-suite", action="store_true",
                        help="the whole GPU comparison (CUDA): torch eager, torch.compile, triton, "
                             "Liger-Kernel if installed, fraction of the bandwidth floor")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help=f"small shapes ({', '.join(QUICK_SHAPES)}), 2 rounds: seconds")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--reference-max-mb", type=float, default=REFERENCE_MAX_BYTES / 2**20,
                        help="benchmark reference only up to this logits size (default 64)")
    parser.add_argument("--device", default="cpu", help="device of the inputs (default cpu)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows to FILE as JSON")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)


def _cases(args: argparse.Namespace) -> list[Case]:
    shapes = args.shape or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    dtypes = args.dtype or ["fp32", "bf16"]
    return [Case(n, v, d, args.device, args.op) for s in shapes for n, v in [parse_shape(s)]
            for d in dtypes]


def _providers(args: argparse.Namespace) -> list[str]:
    names = args.provider or [p for p in PROVIDERS if not (args.quick and p == "torch.compile")]
    for name in names:
        if name not in PROVIDERS:
            raise ValueError(f"--provider={name!r} is not known; allowed: {', '.join(PROVIDERS)}")
    if "torch" not in names:
        names = ["torch", *names]
    return names


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _run_linear(args: argparse.Namespace) -> int:
    """``--op linear`` and ``--gpu-suite`` run the harness of :mod:`labelsmooth.bench_linear`."""
    from . import bench_linear

    n, v = parse_shape((args.shape or ["8192x32768"])[0])
    names = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    dtype = names.get((args.dtype or ["fp32"])[0])
    if dtype is None:
        raise ValueError(f"--op linear --dtype={args.dtype[0]!r} is not allowed; allowed: {', '.join(names)}")
    return bench_linear.run_linear(argparse.Namespace(
        n=n, vocab=v, hidden=args.hidden, dtype=dtype, label_smoothing=SMOOTHING,
        chunk_size=args.chunk_size, memory_budget=None, repeats=args.repeats,
        no_memory=args.no_memory, gpu_suite=args.gpu_suite))


def run(args: argparse.Namespace) -> int:
    if args.gpu_suite or args.op == "linear":
        return _run_linear(args)
    if args.memory_child:
        payload = json.loads(args.memory_child)
        print(json.dumps(memory_child(payload["provider"], [Case(**c) for c in payload["cases"]])))
        return 0
    if args.op not in OPS:
        raise ValueError(f"--op={args.op!r} is not known; allowed: {', '.join(OPS)}")
    if args.repeats < 1:
        raise ValueError(f"--repeats={args.repeats} is not allowed; allowed: an integer >= 1")
    if args.reference_max_mb < 0:
        raise ValueError(f"--reference-max-mb={args.reference_max_mb} is not allowed; allowed: >= 0")
    global REFERENCE_MAX_BYTES
    REFERENCE_MAX_BYTES = int(args.reference_max_mb * 2**20)
    cases, providers = _cases(args), _providers(args)
    repeats = min(args.repeats, 2) if args.quick and args.repeats == 3 else args.repeats
    start = time.perf_counter()
    from .backends import _cpu_build

    info = _cpu_build.build_info()
    print(f"labelsmooth bench: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"label_smoothing={SMOOTHING}, median of {repeats} alternating rounds")
    if info.error:
        print(f"cpu kernel: UNAVAILABLE ({info.error}); the cpu provider runs the pure-torch fallback")
    else:
        how = "loaded from cache" if info.cached else "compiled now"
        print(f"cpu kernel: {how}; one-time compile cost {info.compile_seconds:.1f} s ({info.path})")
    print("vs torch = torch eager time / provider time; / exp = provider time / one torch.exp over "
          "the logits;\nmem = peak extra resident memory / logits bytes (fresh process per provider; "
          "backward = fwd+bwd - forward)")
    memory: dict[str, list[dict[str, float | None]]] = {}
    if not args.no_memory:
        memory = measure_memory(providers, cases, jobs=len(providers) if args.quick else 2)
    rows: list[dict[str, object]] = []
    header = (f"{'shape':>12} {'dtype':>5} {'pass':>16} {'provider':>13} {'ms':>9} {'vs torch':>8} "
              f"{'/ exp':>6} {'mem':>5}")
    print(header)
    print("-" * len(header))
    compile_cost: dict[str, float] = {}
    for ci, case in enumerate(cases):
        times, first = time_case(case, providers, repeats)
        for name, seconds in first.items():
            compile_cost[name] = compile_cost.get(name, 0.0) + seconds
        floor = times[("exp", "floor")]
        for mode in PASSES:
            base = _mode_time(times, "torch", mode)
            for name in providers:
                t = _mode_time(times, name, mode)
                if t is None:
                    continue
                mem_kib = memory.get(name, [{}] * len(cases))[ci].get(
                    "forward+backward" if mode == "backward" else mode)
                mem = None if mem_kib is None else max(0.0, mem_kib) * 1024 / case.logits_bytes
                row = {"shape": f"{case.n}x{case.v}", "dtype": case.dtype, "pass": mode,
                       "provider": name, "median_ms": t * 1e3,
                       "speedup_vs_torch": None if not base or t <= 0 else base / t,
                       "time_over_exp": t / floor, "peak_mem_over_logits": mem}
                rows.append(row)
                print(f"{row['shape']:>12} {case.dtype:>5} {mode:>16} {name:>13} "
                      f"{t * 1e3:9.2f} {_fmt(row['speedup_vs_torch'], '8.2f')} "
                      f"{t / floor:6.2f} {_fmt(mem, '5.2f')}")
        print(f"{case.n}x{case.v} {case.dtype}: one torch.exp = {floor * 1e3:.2f} ms", flush=True)
    if "torch.compile" in compile_cost:
        print(f"torch.compile: first-call (compile) overhead {compile_cost['torch.compile']:.1f} s "
              f"in total (dynamic shapes: once per dtype and grad mode, on a small batch)")
    print(f"bench finished in {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(),
                       "cpu_kernel_compile_seconds": info.compile_seconds,
                       "cpu_kernel_error": info.error,
                       "torch_compile_seconds": compile_cost.get("torch.compile"),
                       "rows": rows}, out, indent=1)
    return 0


def _mode_time(times: dict[tuple[str, str], float], name: str, mode: str) -> float | None:
    if mode == "backward":
        full, fwd = times.get((name, "forward+backward")), times.get((name, "forward"))
        return None if full is None or fwd is None else max(0.0, full - fwd)
    return times.get((name, mode))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="labelsmooth.bench")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
