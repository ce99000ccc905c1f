"""Optional compiled helpers for the exact global cut's two passes: `band.c`, built at first use (smcbench.native).
Without a compiler, or on a non-CPU tensor, the caller uses its torch path: same results."""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch
from torch import Tensor

from smcbench import native

_C = ctypes
_FUNCTIONS = {
    "smc_band": (_C.c_int64, [_C.c_void_p, _C.c_void_p, _C.c_int, _C.c_int64, _C.c_float, _C.c_float, _C.c_void_p,
                              _C.c_int64, _C.c_void_p, _C.c_int]),
    "smc_keep": (None, [_C.c_void_p, _C.c_int, _C.c_int64, _C.c_float, _C.c_void_p, _C.c_int]),
}


def _library() -> ctypes.CDLL | None:
    return native.load(Path(__file__).with_name("band.c"), _FUNCTIONS, ("-fopenmp",))


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
