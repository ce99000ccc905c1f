"""The report's "What the sparsity buys": the measured inference speed, memory and size of each pruned model
(`smc-bench bench inference --runs OUT`, which writes OUT/inference.json beside results.db) beside its score.
Speedups are against the dense backend on the same model, measured in the same run; a backend whose outputs
differed from the masked dense model's was not timed."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt

from smcbench.errors import SmcBenchError
from smcbench.inference.results import SPEEDS, best, crossover, ratio

FILE = "inference.json"
LABELS = {"latency_ms": "batch 1", "throughput": "serving batch", "linear_ms": "pruned Linear layers"}


def load(results: Path) -> dict | None:
    """The inference measurements beside a results database, if any."""
    path = results.parent / FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SmcBenchError(f"{str(path)!r} is not readable JSON ({err}): run `smc-bench bench inference --runs "
                            f"{results.parent}` again") from err


def speedups(measured: dict, variants: dict[str, str]) -> dict[tuple[str, str], dict[str, dict[float, float]]]:
    """(task, model) → method variant → level → the best checked backend's batch-1 speedup (the cross-task
    table's "speedup at the failing sparsity")."""
    out: dict[tuple[str, str], dict[str, dict[float, float]]] = defaultdict(lambda: defaultdict(dict))
    for row in measured.get("rows", []):
        top = best(row)
        if top is not None and row.get("run_id") in variants:
            out[(row["task"], row["model"])][variants[row["run_id"]]][round(row["target_sparsity"], 3)] = top[1]
    return out


def sections(measured: dict, variants: dict[str, str], label_of, figure) -> list[tuple[str, str]]:
    """One section per (task, model) measured: the table, the crossover levels and the accuracy-speed figure."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in measured.get("rows", []):
        if "run_id" in row:
            groups[(row["task"], row["model"])].append(row)
    m = measured.get("machine", {})
    job = measured.get("job", {})
    where = (f"Measured on {m.get('cpu', '?')} ({m.get('cores', '?')} cores, torch {m.get('torch', '?')}, "
             f"{job.get('threads', '?')} threads): batch 1 over {job.get('examples', '?')} test examples, a serving "
             f"batch of {job.get('serving_batch', '?')}, {job.get('reps', '?')} repetitions (medians). Backends: "
             + "; ".join(f"{b}: {s}" for b, s in measured.get("backends", {}).items()) + ".")
    out = []
    for key, rows in sorted(groups.items()):
        rows = sorted(rows, key=lambda r: (variants.get(r["run_id"], r["method"]), r["target_sparsity"]))
        dense_size = next((r["sizes"]["dense"] for r in rows if r["target_sparsity"] == 0), rows[0]["sizes"]["dense"])
        lines = [where, "", "| method | sparsity | " + (rows[0].get("metric") or "score") + " | fastest backend | "
                 "batch 1 × | serving × | Linear layers × | its memory MB | size (bitmask + zlib) |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            top = best(r)
            mem = [r["backends"][top[0]]["memory_mb"]] if top else []
            name = variants.get(r["run_id"], r["method"])
            speeds = [ratio(r, top[0], k) if top else None for k in SPEEDS]
            size = r["sizes"]["bitmask_zlib"] if r["target_sparsity"] else r["sizes"]["dense"]
            score = f"{r['value']:.3f}" if r.get("value") is not None else ""
            lines.append(f"| {name} | {r['achieved_sparsity']:.3f} | {score} | {top[0] if top else 'none passed'} | "
                         + " | ".join("" if s is None else f"{s:.2f}" for s in speeds)
                         + f" | {f'{min(mem):.0f}' if mem else ''} | {size / 1e6:.1f} MB ({size / dense_size:.2f} "
                         "of dense) |")
        lines += ["", "From which level a backend beats dense at every level measured above it (per sparsity "
                  "pattern; \"never\": not at the highest level measured):"]
        for backend in measured.get("backends", {}):
            if backend == "dense":
                continue
            patterns = sorted({r.get("pattern", "") for r in rows if r["backends"].get(backend, {}).get("status")
                               == "ok" and r.get("pattern") != "dense"})
            for pattern in patterns:
                cross = {k: crossover(rows, backend, k, pattern) for k in SPEEDS}
                lines.append(f"- {backend}, {pattern} models: " + ", ".join(
                    f"{LABELS[k]} " + ("never" if v is None else f"from {v:.3f}") for k, v in cross.items()))
            if not patterns:
                reasons = sorted({r["backends"].get(backend, {}).get("status", "not run") for r in rows
                                  if r.get("pattern") != "dense"})
                lines.append(f"- {backend}: never measured here ({reasons[0]})")
        out.append((f"What the sparsity buys: {label_of(key)}", "\n".join(lines)))
        figure(pareto(rows, variants, label_of(key)), f"speed-{key[0].replace('/', '-')}-{Path(key[1]).name}",
               f"Score vs measured speedup: {label_of(key)}")
    return out


def pareto(rows: list[dict], variants: dict[str, str], label: str):
    """Each pruned model's score against its best checked batch-1 speedup; the models no other beats on both
    joined by a line (the Pareto front)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = []
    by_method: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        top = best(r)
        if top is None or r.get("value") is None:
            continue
        # The front is over "better" scores: a lower-is-better metric is flipped for it, never for the axis.
        by_method[variants.get(r["run_id"], r["method"])].append((top[1], r["value"]))
        points.append((top[1], r["value"] if r.get("higher_is_better", True) else -r["value"]))
    for name, xy in sorted(by_method.items()):
        ax.scatter([x for x, _ in xy], [y for _, y in xy], label=name)
    front = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    front.sort()
    if len(front) > 1:
        sign = 1 if rows[0].get("higher_is_better", True) else -1
        ax.plot([x for x, _ in front], [sign * y for _, y in front], color="gray", linestyle="--", label="Pareto front")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("measured batch-1 speedup over dense (best checked backend)")
    ax.set_ylabel(rows[0].get("metric") or "score")
    ax.set_title(label)
    ax.legend(fontsize=7)
    return fig
