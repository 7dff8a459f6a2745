"""Build and load the native kernel of the ``cpu`` backend (``_native/fused_ce.cpp``).

The kernel is a plain C ABI library compiled on first use with the system C++ compiler against
torch's headers (ATen's ``Vectorized`` exp, the same code ``torch.exp`` runs) and OpenMP (torch's own
``libgomp``, so one thread pool), then called through :mod:`ctypes`. No pybind11 and no ninja: one
``g++`` call of a few seconds. It does not depend on the batch size, so nothing is ever recompiled.

The library is cached in ``$LABELSMOOTH_CACHE_DIR`` (default ``$XDG_CACHE_HOME/labelsmooth`` or
``~/.cache/labelsmooth``) under a name that hashes the source, the flags, the compiler and torch's
version; the compile time is stored next to it so ``labelsmooth bench`` can report it.

Without a compiler (or when the build fails, or with ``LABELSMOOTH_CPU_NATIVE=0``) :func:`library`
returns ``None`` after one warning, and the backend uses its pure-torch chunked path.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

NATIVE_ENV = "LABELSMOOTH_CPU_NATIVE"
CACHE_ENV = "LABELSMOOTH_CACHE_DIR"
SOURCE = Path(__file__).with_name("_native") / "fused_ce.cpp"
DTYPE_SYMBOLS = {
    torch.float32: "ls_fused_ce_f32",
    torch.float64: "ls_fused_ce_f64",
    torch.bfloat16: "ls_fused_ce_bf16",
    torch.float16: "ls_fused_ce_f16",
}

_lock = threading.Lock()
_state: dict[str, object] = {}


class BuildInfo:
    """What the last :func:`library` call did: ``path``, ``compile_seconds`` (of the build that made
    the cached file), ``cached`` (loaded without compiling), ``error`` (why the fallback is used)."""

    def __init__(self, path: str | None, compile_seconds: float | None, cached: bool,
                 error: str | None) -> None:
        self.path, self.compile_seconds, self.cached, self.error = path, compile_seconds, cached, error

    def __repr__(self) -> str:
        return (f"BuildInfo(path={self.path!r}, compile_seconds={self.compile_seconds!r}, "
                f"cached={self.cached!r}, error={self.error!r})")


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "labelsmooth"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _flags() -> list[str]:
    from torch.utils.cpp_extension import include_paths

    torch_lib = str(Path(torch.__file__).parent / "lib")
    flags = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-w"]
    # The vector ISA torch itself dispatches to on this machine (AVX512 hosts use the AVX2 kernels).
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
    flags += [f"-I{p}" for p in include_paths()]
    flags += [f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    return [*flags, f"-L{torch_lib}", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{torch_lib}"]


def _build(compiler: str) -> tuple[Path, float, bool]:
    source = SOURCE.read_text()
    flags = _flags()
    key = hashlib.sha256("\n".join([source, compiler, torch.__version__, *flags]).encode()).hexdigest()
    out_dir = cache_dir()
    target = out_dir / f"fused_ce_{key[:16]}.so"
    meta = target.with_suffix(".json")
    if target.exists():
        try:
            seconds = float(json.loads(meta.read_text())["compile_seconds"])
        except (OSError, ValueError, KeyError):
            seconds = float("nan")
        return target, seconds, True
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    start = time.perf_counter()
    proc = subprocess.run([compiler, str(SOURCE), "-o", tmp, *flags], capture_output=True,
                          text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        os.unlink(tmp)
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise RuntimeError(f"{compiler} failed ({proc.returncode}): " + " | ".join(lines[:3]))
    os.replace(tmp, target)  # atomic: concurrent builders (pytest -n 2) both leave a valid file
    meta.write_text(json.dumps({"compile_seconds": seconds, "compiler": compiler}))
    return target, seconds, False


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    i64, vp = ctypes.c_int64, ctypes.c_void_p
    for dtype, name in DTYPE_SYMBOLS.items():
        acc = ctypes.c_double if dtype == torch.float64 else ctypes.c_float
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int
        fn.argtypes = [vp, i64, i64, i64, vp, vp, vp, vp, vp, acc, acc, acc, vp, vp, vp, vp, i64]
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, or ``None`` (pure-torch fallback; warned about once)."""
    with _lock:
        if "lib" in _state:
            return _state["lib"]  # type: ignore[return-value]
        lib, info = None, None
        if os.environ.get(NATIVE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
            info = BuildInfo(None, None, False, f"disabled by {NATIVE_ENV}")
        elif (compiler := _compiler()) is None:
            info = BuildInfo(None, None, False, "no C++ compiler found (tried $CXX, c++, g++, clang++)")
        else:
            try:
                path, seconds, cached = _build(compiler)
                lib = _load(path)
                info = BuildInfo(str(path), seconds, cached, None)
            except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as exc:
                info = BuildInfo(None, None, False, str(exc))
        if lib is None:
            warnings.warn(f"labelsmooth cpu backend: native kernel unavailable ({info.error}); using "
                          f"the slower pure-torch chunked path", RuntimeWarning, stacklevel=3)
        _state["lib"], _state["info"] = lib, info
        return lib


def build_info() -> BuildInfo:
    """How the kernel was obtained (builds or loads it first if needed)."""
    library()
    return _state["info"]  # type: ignore[return-value]


def reset() -> None:
    """Forget the loaded library (tests use it to exercise the fallback)."""
    with _lock:
        _state.clear()
