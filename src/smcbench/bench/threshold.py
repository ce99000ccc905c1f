"""`smc-bench bench threshold`: global magnitude pruning of a RoBERTa-large-shaped set of weights.

(a) this engine, (b) torch.nn.utils.prune.global_unstructured, (c) torch.cat + topk(sorted=True) as the official
sparse_core does, (d) the floor: one pass computing every weight's magnitude (|w|, reduced per tensor), the least
work any magnitude pruner must do. Also `read_only`: a plain read of every weight (memory bandwidth).
Each method runs in its own subprocess: time and peak extra memory (above the weights) are its own.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

from smcbench.bench.measure import in_subprocess, timed
from smcbench.sparsity.allocation import Slot, allocate_global, prune_groups, target_count
from smcbench.sparsity.scores import MagnitudeScore

METHODS = ("engine", "torch_prune", "concat_topk", "floor", "read_only")
SPARSITY = 0.5


def shapes(layers: int, hidden: int, vocab: int) -> list[tuple[int, int]]:
    """RoBERTa-large at the defaults: 24 × (4·1024² + 2·1024·4096) + 50,265 × 1024 = 353.5M weights."""
    per_layer = [(hidden, hidden)] * 4 + [(4 * hidden, hidden), (hidden, 4 * hidden)]
    return [(vocab, hidden)] + per_layer * layers


def make_modules(layers: int, hidden: int, vocab: int) -> list[nn.Module]:
    """fp32 weights filled in place (no temporaries, so the process peak before a method is its baseline)."""
    gen = torch.Generator().manual_seed(0)
    modules: list[nn.Module] = [nn.utils.skip_init(nn.Embedding, vocab, hidden)]
    for out_f, in_f in shapes(layers, hidden, vocab)[1:]:
        modules.append(nn.utils.skip_init(nn.Linear, in_f, out_f, bias=False))
    with torch.no_grad():
        for m in modules:
            m.weight.normal_(generator=gen)
    return modules


def run_engine(modules: list[nn.Module]) -> list[torch.Tensor]:
    slots = [
        Slot(str(i), m.weight, torch.ones(m.weight.shape, dtype=torch.bool)) for i, m in enumerate(modules)
    ]
    prune_groups(allocate_global(slots, SPARSITY), MagnitudeScore())
    return [s.mask for s in slots]


def engine_exact(masks: list[torch.Tensor]) -> bool:
    numel = sum(m.numel() for m in masks)
    return numel - sum(int(m.count_nonzero()) for m in masks) == target_count(SPARSITY, numel)


def run_torch_prune(modules: list[nn.Module]) -> None:
    import torch.nn.utils.prune as prune

    prune.global_unstructured(
        [(m, "weight") for m in modules], pruning_method=prune.L1Unstructured, amount=SPARSITY
    )


def run_concat_topk(modules: list[nn.Module]) -> None:
    scores = torch.cat([m.weight.detach().abs().flatten() for m in modules])
    keep = int(scores.numel() * (1 - SPARSITY))
    threshold = torch.topk(scores, keep, sorted=True).values[-1]
    del scores
    [(m.weight.detach().abs() >= threshold) for m in modules]


@torch.no_grad()
def run_floor(modules: list[nn.Module]) -> None:
    for m in modules:
        m.weight.abs().sum()


@torch.no_grad()
def run_read_only(modules: list[nn.Module]) -> None:
    for m in modules:
        m.weight.sum()


def measure(method: str, layers: int, hidden: int, vocab: int) -> dict:
    modules = make_modules(layers, hidden, vocab)
    fn = {
        "engine": run_engine,
        "torch_prune": run_torch_prune,
        "concat_topk": run_concat_topk,
        "floor": run_floor,
        "read_only": run_read_only,
    }[method]
    out = timed(lambda: fn(modules))
    exact = engine_exact(out["result"]) if method == "engine" else None  # checked outside the timing
    params = sum(m.weight.numel() for m in modules)
    return {"method": method, "seconds": out["seconds"], "extra_mb": out["extra_mb"], "exact": exact,
            "params": params}


def run(methods: tuple[str, ...] = METHODS, layers: int = 24, hidden: int = 1024, vocab: int = 50265) -> dict:
    """All methods, each in a subprocess; the JSON keys of `smc-bench bench threshold --json`."""
    got = {
        m: in_subprocess(__name__, "--method", m, "--layers", str(layers), "--hidden", str(hidden),
                         "--vocab", str(vocab))
        for m in methods
    }
    out: dict = {"params": next(iter(got.values()))["params"]}
    names = {"engine": "engine", "torch_prune": "torch_prune", "concat_topk": "concat_topk"}
    for m, r in got.items():
        if m in names:
            out[f"{names[m]}_s"] = r["seconds"]
            out[f"{names[m]}_extra_mb"] = r["extra_mb"]
        else:
            out[f"{m}_s"] = r["seconds"]
    if "engine" in got:
        out["engine_exact"] = bool(got["engine"]["exact"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=50265)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(json.dumps(measure(args.method, args.layers, args.hidden, args.vocab)))


if __name__ == "__main__":
    main()


def render(out: dict) -> str:
    """The benchmark's lines: each method's time and extra memory, the engine against the others."""
    lines = [f"global magnitude pruning to 50 % of {out['params']:,} fp32 weights (each method in its own process)"]
    for key, label in [("engine", "smc-bench engine"), ("torch_prune", "torch prune.global_unstructured"),
                       ("concat_topk", "torch.cat + topk (official)")]:
        if f"{key}_s" in out:
            lines.append(f"  {label:<32} {out[f'{key}_s']:8.2f} s  {out[f'{key}_extra_mb']:8.0f} MB extra")
    for key, label in [("floor_s", "floor: |w| of every weight"), ("read_only_s", "plain read of every weight")]:
        if key in out:
            lines.append(f"  {label:<32} {out[key]:8.2f} s")
    if "engine_s" in out:
        lines.append(f"  engine exact count: {out['engine_exact']}")
        for key in ("floor_s", "read_only_s", "torch_prune_s", "concat_topk_s"):
            if key in out:
                lines.append(f"  engine / {key[:-2]}: {out['engine_s'] / out[key]:.2f}x")
    return "\n".join(lines)
