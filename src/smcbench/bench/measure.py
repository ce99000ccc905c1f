"""Run one measurement in a fresh subprocess, so time and peak memory of each method are its own."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def timed(fn: Callable[[], Any]) -> dict:
    """Time `fn` and its peak memory above the resident set at its start (the process's earlier peak must
    not exceed that: build inputs without temporaries)."""
    base = rss_mb()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "extra_mb": max(0.0, peak_rss_mb() - base), "result": result}


def in_subprocess(module: str, *args: str) -> dict:
    """Run `python -m module args...`, which prints one JSON object on its last line."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{module} {' '.join(args)} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def matmul_peak_gflops(size: int = 2048, seconds: float = 1.0) -> float:
    """This machine's fp32 matmul peak as torch reaches it now: the best of repeated size×size products over
    about `seconds` (all of torch's threads), in GFLOP/s. Measured in the process whose work it judges, beside it."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)  # warm-up: threads, caches
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9
