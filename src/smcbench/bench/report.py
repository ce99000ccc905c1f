"""`smc-bench bench report`: how long the report takes on a results database of thousands of runs.

The database is synthetic but shaped like the paper's grid: tasks × methods × the 10 levels × seeds, each record
with a MiniLM-sized layer table (38 tensors) and weight changes, accuracies falling with sparsity at a
method-dependent rate, so every section (curves, failing sparsity, the cross-task summary, layerwise figures)
has work to do. The runs' folders do not exist, so the sections that read masks from disk (mask overlap) are
skipped; the time is the database read, the analysis and the rendering.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from pathlib import Path

from smcbench.runner.store import ResultStore
from smcbench.sparsity import imp_levels

TASKS = ["commonsense/csqa", "commonsense/race-h", "commonsense/winogrande", "arithmetic/mawps", "arithmetic/svamp",
         "protein/hp-s2c2", "protein/hp-s2c5", "translation/10-10"]
METHODS = ["lth", "omp_after", "random_after", "gmp", "omp_before", "random_before", "snip", "omp_rigl",
           "random_rigl", "snip_rigl", "obert", "sparsegpt", "wanda", "variational_dropout", "l0", "scratch_e"]
LAYERS = ([("embeddings.word_embeddings.weight", (30522, 384))]
          + [(f"encoder.layer.{k}.{part}.weight", shape) for k in range(6)
             for part, shape in [("attention.self.query", (384, 384)), ("attention.self.key", (384, 384)),
                                 ("attention.self.value", (384, 384)), ("attention.output.dense", (384, 384)),
                                 ("intermediate.dense", (1536, 384)), ("output.dense", (384, 1536))]]
          + [("classifier.weight", (1, 384))])


def synthetic_records(rows: int, seed: int = 0) -> list[dict]:
    """About `rows` finished runs (whole task × method × level × seed blocks, dense included)."""
    rng = random.Random(seed)
    levels = imp_levels(10)
    per_seed = len(TASKS) * (1 + len(METHODS) * len(levels))
    seeds = max(1, math.ceil(rows / per_seed))
    out = []
    for task, s in ((t, s) for t in TASKS for s in range(seeds)):
        dense = 0.5 + 0.4 * rng.random()
        fragility = {m: 0.5 + 3 * rng.random() for m in METHODS}
        out.append(_record(task, "dense", 0.0, s, dense, rng))
        for method in METHODS:
            for level in levels:
                accuracy = dense * (1 - level ** (1 / fragility[method]) * 0.6) + rng.gauss(0, 0.005)
                out.append(_record(task, method, level, s, accuracy, rng))
    return out[:rows] if len(out) > rows else out


def _record(task: str, method: str, level: float, seed: int, accuracy: float, rng: random.Random) -> dict:
    run_id = f"{rng.getrandbits(64):016x}"
    layers = []
    for name, shape in LAYERS:
        numel = shape[0] * shape[1]
        pruned = min(numel, max(0, round(numel * min(1.0, level * (0.8 + 0.4 * rng.random())))))
        layers.append({"name": name, "shape": list(shape), "numel": numel, "pruned": pruned,
                       "sparsity": pruned / numel, "collapsed": pruned == numel})
    return {
        "run_id": run_id, "task": task, "model": "minilm", "fold": None, "method": method,
        "target_sparsity": level, "achieved_sparsity": level,
        "layers": layers, "metric": {"name": "accuracy", "higher_is_better": True, "chance": 0.2},
        "metrics": {"accuracy": accuracy, "eval_examples": 1000},
        "weight_change": {name: 0.01 + 0.05 * rng.random() for name, _ in LAYERS},
        "validation_best": accuracy, "best_step": 100, "steps": 200, "seed": seed, "train_s": 60.0, "wall_s": 65.0,
        "notes": {}, "config": {"schema": 3, "task": {"task": task, "seed": seed}, "method": method,
                                "sparsity": level, "train": {}, "settings": {}},
        "code_version": "synthetic", "finished_at": "2026-01-01T00:00:00Z", "dir": f"/nonexistent/{run_id}",
    }


def run(rows: int = 5000) -> dict:
    """Write a synthetic database of `rows` runs, render the report, and time each part."""
    from smcbench.report.render import build

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = ResultStore(root / "results.db")
        records = synthetic_records(rows)
        start = time.perf_counter()
        for record in records:
            store.append(record)
        write_s = time.perf_counter() - start
        start = time.perf_counter()
        loaded = store.records()
        read_s = time.perf_counter() - start
        start = time.perf_counter()
        build(root / "results.db", root / "report")
        report_s = time.perf_counter() - start
        html_mb = (root / "report" / "report.html").stat().st_size / 1e6
        figures = len(list((root / "report").glob("*.png")))
    return {"rows": len(loaded), "tasks": len(TASKS), "methods": len(METHODS), "write_s": write_s,
            "read_s": read_s, "report_s": report_s, "html_mb": html_mb, "figures": figures}


def render(out: dict) -> str:
    return "\n".join([
        f"report over a synthetic results database: {out['rows']:,} runs ({out['tasks']} tasks x "
        f"{out['methods']} methods x 10 levels x seeds, dense included)",
        f"  write rows   {out['write_s']:7.2f} s (one transaction per run, as the runner does)",
        f"  read rows    {out['read_s']:7.2f} s",
        f"  report       {out['report_s']:7.2f} s  ({out['figures']} figures, report.html {out['html_mb']:.1f} MB)",
        f"  per 1,000 runs: {out['report_s'] / out['rows'] * 1000:.2f} s",
    ])
