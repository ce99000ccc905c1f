"""`smc-bench layerwise`: prune a pretrained model with several methods, print the layerwise
sparsity of each side by side."""

from __future__ import annotations

import time

from smcbench.models import load_pretrained
from smcbench.sparsity import Sparsifier, make_score

METHODS = [
    ("global magnitude", "magnitude", "global"),
    ("uniform random", "random", "uniform"),
    ("ERK magnitude", "magnitude", "erk"),
    ("2:4 magnitude", "magnitude", "2:4"),
]


def short(name: str) -> str:
    for old, new in [("bert.", ""), ("encoder.layer.", "L"), ("attention.self.", "attn."),
                     ("attention.output.dense", "attn.out"), ("intermediate.dense", "ffn.in"),
                     ("output.dense", "ffn.out"), (".weight", "")]:
        name = name.replace(old, new)
    return name


def run(model: str = "minilm", sparsity: float = 0.5, preset: str = "all") -> str:
    """Prune a fresh copy per method; return the side-by-side table."""
    columns, times, names, numels = {}, {}, [], []
    for label, score, allocation in METHODS:
        net = load_pretrained(model)
        sp = Sparsifier(net, preset)
        start = time.perf_counter()
        sp.prune(sparsity, make_score(score, seed=0) if score == "random" else score, allocation)
        times[label] = time.perf_counter() - start
        rows = sp.layers()
        names, numels = [r.name for r in rows], [r.numel for r in rows]
        columns[label] = (rows, sp.sparsity())
    width = max(len(short(n)) for n in names)
    head = f"{'tensor':<{width}} {'params':>10} " + " ".join(f"{label:>16}" for label in columns)
    lines = [f"{model}: {sum(numels):,} prunable weights (preset {preset!r}), target sparsity {sparsity}", head]
    for i, name in enumerate(names):
        cells = []
        for rows, _ in columns.values():
            r = rows[i]
            cells.append(f"{r.sparsity:>16.4f}" if not r.collapsed else f"{'COLLAPSED':>16}")
        lines.append(f"{short(name):<{width}} {numels[i]:>10,} " + " ".join(cells))
    lines.append(f"{'overall':<{width}} {sum(numels):>10,} " + " ".join(f"{s:>16.4f}" for _, s in columns.values()))
    lines.append(f"{'prune time (s)':<{width}} {'':>10} " + " ".join(f"{t:>16.3f}" for t in times.values()))
    return "\n".join(lines)
