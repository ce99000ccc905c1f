"""Where smc-bench keeps what it builds once per machine: pretrained tiny models, probe costs, compiled helpers."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$SMCBENCH_CACHE, default ~/.cache/smcbench."""
    return Path(os.environ.get("SMCBENCH_CACHE", Path.home() / ".cache" / "smcbench"))
