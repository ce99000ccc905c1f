"""Small C helpers built at first use with the system's C compiler into $SMCBENCH_CACHE/native: plain shared
libraries called through ctypes (no torch headers, each built in under a second). Without a compiler, with
SMCBENCH_NATIVE=0, or when a build fails, `load` returns None and the caller takes its torch path, with the same
results."""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from smcbench.cache import cache_dir

_LOADED: dict[Path, ctypes.CDLL | None] = {}  # once per process and source


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def load(source: Path, functions: dict[str, tuple], flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """The library built from `source` (cached by its text, the compiler, the flags and this CPU's features),
    with each of `functions` given its (restype, argtypes); None where it cannot be built or loaded."""
    if source in _LOADED:
        return _LOADED[source]
    lib = None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler and os.environ.get("SMCBENCH_NATIVE", "1") != "0":
        args = ["-O3", "-march=native", "-shared", "-fPIC", *flags]
        # -march=native: the build fits this CPU only, so its features are part of the key (a shared home
        # directory may serve several machines).
        what = " ".join([compiler, *args, platform.machine(), _cpu_flags()])
        key = hashlib.sha256(source.read_bytes() + what.encode()).hexdigest()[:16]
        path = cache_dir() / "native" / f"{source.stem}-{key}.so"
        try:
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                    built = Path(tmp) / path.name
                    subprocess.run([compiler, *args, str(source), "-o", str(built)], check=True,
                                   capture_output=True, timeout=120)
                    built.replace(path)  # whole, then renamed: a concurrent run never loads half a file
            lib = ctypes.CDLL(str(path))
            for name, (restype, argtypes) in functions.items():
                getattr(lib, name).restype = restype
                getattr(lib, name).argtypes = argtypes
        except (OSError, subprocess.SubprocessError, AttributeError):
            lib = None  # no working compiler here: the torch path
    _LOADED[source] = lib
    return lib
