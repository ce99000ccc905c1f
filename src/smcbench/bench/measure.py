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
