"""glibc's allocator settings for CPU training, process-wide.

By default glibc serves every allocation above a moving threshold (at most 32 MB) with its own mmap and gives freed
memory back to the system at once, so each training step's large activations (attention's probabilities, a batch's
hidden states) are mapped, zero-filled page by page and unmapped again: on the development machine about 35,000
page faults a step on esm-tiny. Keeping freed memory in the heap for reuse removes nine in ten of them (esm-tiny's
HP-S2C2 epoch: 94.0 s before, 77.8 s after, accuracy identical). The arithmetic is untouched (the same kernels on
the same values, checked bit for bit in the tests); the process's peak resident memory did not grow there (1,309
and 1,347 MB), but what it holds no longer falls between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_LIMIT = 1 << 30
_done = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to 1 GiB, once per process; False where the C library is not glibc
    (nothing changes there)."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    _done = bool(mallopt(_M_MMAP_THRESHOLD, _LIMIT)) and bool(mallopt(_M_TRIM_THRESHOLD, _LIMIT))
    return _done
