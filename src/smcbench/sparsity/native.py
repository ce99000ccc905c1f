"""Optional compiled helpers for the exact global cut's two passes: `band.c`, built at first use with the system's C
compiler into $SMCBENCH_CACHE/native (a plain shared library called through ctypes: no torch headers, built in
under a second). Without a compiler, or on a non-CPU tensor, the caller uses its torch path: same results."""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from smcbench.cache import cache_dir

_SOURCE = Path(__file__).with_name("band.c")
_FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-fopenmp"]
_LIB: list = []  # [library or None], once per process


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _library() -> ctypes.CDLL | None:
    if _LIB:
        return _LIB[0]
    lib = None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler and os.environ.get("SMCBENCH_NATIVE", "1") != "0":
        source = _SOURCE.read_bytes()
        # -march=native: the build fits this CPU only, so its features are part of the key (a shared home
        # directory may serve several machines).
        what = " ".join([compiler, *_FLAGS, platform.machine(), _cpu_flags()])
        key = hashlib.sha256(source + what.encode()).hexdigest()[:16]
        path = cache_dir() / "native" / f"band-{key}.so"
        try:
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                    built = Path(tmp) / "band.so"
                    subprocess.run([compiler, *_FLAGS, str(_SOURCE), "-o", str(built)], check=True,
                                   capture_output=True, timeout=120)
                    built.replace(path)  # whole, then renamed: a concurrent run never loads half a file
            lib = ctypes.CDLL(str(path))
            lib.smc_band.restype = ctypes.c_int64
            lib.smc_band.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float,
                                     ctypes.c_float, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
            lib.smc_keep.restype = None
            lib.smc_keep.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p,
                                     ctypes.c_int]
        except (OSError, subprocess.SubprocessError):
            lib = None  # no working compiler here: the torch path
    _LIB.append(lib)
    return lib


def band_available(scores: Tensor) -> bool:
    return scores.device.type == "cpu" and _library() is not None


def band(scores: Tensor, lo: float, hi: float, out: Tensor, absval: bool = False,
         kept: Tensor | None = None) -> tuple[int, int, int, bool]:
    """Over float32 CPU `scores`: (count below lo, count in [lo, hi], NaN count, whether they all fit), the ones
    in [lo, hi] copied to the front of `out` (float32, contiguous) when they fit (each of torch's threads takes
    an equal share of the chunk and of `out`). `absval`: `scores` are weights and the score is their absolute
    value; `kept` (bool, same length): False marks a weight already pruned, which scores -inf."""
    scores = scores.contiguous()
    counts = torch.zeros(3, dtype=torch.int64)
    kept = None if kept is None else kept.contiguous()  # (held: the pointer must outlive the call)
    kept_ptr = None if kept is None else kept.data_ptr()
    got = _library().smc_band(scores.data_ptr(), kept_ptr, int(absval), scores.numel(), lo, hi, out.data_ptr(),
                              out.numel(), counts.data_ptr(), torch.get_num_threads())
    below, inside, nan = counts.tolist()
    return below, inside, nan, got >= 0


def keep(scores: Tensor, threshold: float, mask: Tensor, absval: bool = False) -> None:
    """mask &= scores >= threshold (|scores| with `absval`), in place (float32 CPU scores, a contiguous bool mask of
    the same length)."""
    scores = scores.contiguous()
    _library().smc_keep(scores.data_ptr(), int(absval), scores.numel(), threshold, mask.data_ptr(),
                        torch.get_num_threads())
