"""What the benchmarks measure with: one measurement in a fresh subprocess (so time and peak memory of each method
are its own), the machine's matmul peak, and the training FLOPs that model FLOP utilisation divides by it."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Hashable, Sequence
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


def training_flops(model: Any, collate: Callable[[list], dict], loss_fn: Callable[[Any, dict], Any],
                   examples: Sequence[Any], key: Callable[[Any], tuple[int, ...]]) -> float:
    """Forward and backward FLOPs of training on every example of `examples` alone (no padding), summed: matrix
    products and attention, as torch's FlopCounterMode counts them (elementwise work counts none).

    `key` gives an example's sequence lengths. A transformer's FLOPs are a polynomial of degree two in them
    (weights: linear; attention: a product of two lengths), so a few examples spread over the lengths are counted
    alone and the polynomial fitted to them gives every example's count; every counted example must lie on the fit
    (to 1e-9), else each distinct length is counted. The model's gradients are left empty and no random number is
    drawn (counted in eval mode), so a training run after this is the run it would have been."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from smcbench.training.loop import loss_value

    first: dict[Hashable, Any] = {}
    keys = [tuple(key(e)) for e in examples]
    for e, k in zip(examples, keys, strict=True):
        first.setdefault(k, e)
    distinct = sorted(first)

    def counted(k: tuple[int, ...]) -> int:
        with FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas()) as counter:
            loss_value(loss_fn(model, collate([first[k]]))).backward()
        model.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    def terms(k: tuple[int, ...]) -> list[float]:
        return [1.0, *k, *(k[i] * k[j] for i in range(len(k)) for j in range(i, len(k)))]

    training = model.training
    model.eval()
    try:
        wanted = 2 * len(terms(distinct[0])) + 2  # twice the polynomial's coefficients, spread over the lengths
        picks = sorted({distinct[round(i * (len(distinct) - 1) / (wanted - 1))] for i in range(wanted)})
        flops = {k: counted(k) for k in picks}
        x = torch.tensor([terms(k) for k in picks], dtype=torch.float64)
        y = torch.tensor([flops[k] for k in picks], dtype=torch.float64)
        scale = x.abs().amax(0).clamp(min=1)  # columns run from 1 to length²: scaled, the fit is well conditioned
        coef = torch.linalg.lstsq(x / scale, y[:, None]).solution[:, 0] / scale
        if len(picks) == len(distinct) or not torch.allclose(x @ coef, y, rtol=1e-9, atol=0.5):
            flops |= {k: counted(k) for k in distinct if k not in flops}
            return float(sum(flops[k] for k in keys))
    finally:
        model.train(training)
    per_key = dict(zip(distinct, (torch.tensor([terms(k) for k in distinct], dtype=torch.float64) @ coef).tolist(),
                       strict=True))
    return float(sum(per_key[k] for k in keys))


def _cpu_attention_formulas() -> dict:
    """FlopCounterMode counts the GPU kernels of scaled_dot_product_attention but not the CPU one (it counted 0).
    Model FLOPs, as MFU counts them: backward is the forward's two products twice over (the kernel's recomputation
    of the scores is the implementation's cost, not the model's; torch's own backward formula includes it)."""
    import torch
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    return {aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *args, **kwargs: fc.sdpa_flop_count(q, k, v),
            aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda grad, q, k, v, *args, **kwargs: 2 * fc.sdpa_flop_count(q, k, v)}
