"""Reading measured inference results (`bench inference`'s rows): speedups over the dense backend of the same
model, the best checked backend, and the crossover level from which a backend beats dense."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

SPEEDS = ("latency_ms", "throughput", "linear_ms")  # batch-1 latency, serving throughput, pruned Linear layers


def ratio(row: dict, backend: str, key: str) -> float | None:
    """Backend `backend`'s speed over the dense backend's on the same model (median figures; > 1: faster), for a
    measurement that passed its check; else None."""
    mine, dense = row["backends"].get(backend, {}), row["backends"].get("dense", {})
    if mine.get("status") != "ok" or dense.get("status") != "ok" or not mine.get(key) or not dense.get(key):
        return None
    a, b = mine[key]["median"], dense[key]["median"]
    return a / b if key == "throughput" else b / a


def best(row: dict, key: str = "latency_ms") -> tuple[str, float] | None:
    """The fastest checked backend for this model (dense included, at 1.0) and its speedup over dense."""
    options = [(b, ratio(row, b, key)) for b in row["backends"]]
    options = [(b, x) for b, x in options if x is not None]
    return max(options, key=lambda o: o[1]) if options else None


def pattern_of(masks: dict[str, Tensor]) -> str:
    """dense (nothing masked), 2:4, structured (every pruned weight in a wholly pruned row or column: whole
    heads and neurons), or unstructured."""
    from smcbench.inference.backends import is_two_four

    pruned = [~m for m in masks.values() if not m.all()]
    if not pruned:
        return "dense"
    if all(p.dim() == 2 and is_two_four(~p) for p in pruned):
        return "2:4"
    if all(p.dim() == 2 and not (p & ~(p.all(1, keepdim=True) | p.all(0, keepdim=True))).any() for p in pruned):
        return "structured"
    return "unstructured"


def crossover(rows: Sequence[dict], backend: str, key: str, pattern: str = "unstructured") -> float | None:
    """The lowest measured sparsity from which `backend` beats dense at every measured level above it (None:
    it does not beat dense at the highest level), over the models of one sparsity pattern."""
    points = sorted((r["achieved_sparsity"], ratio(r, backend, key)) for r in rows if r.get("pattern") == pattern)
    points = [(s, x) for s, x in points if x is not None and s > 0]
    found = None
    for s, x in reversed(points):
        if x <= 1:
            break
        found = s
    return found
