"""One method against another, level by level: the paired test of the verdicts (report.significance) with the
first method in dense's place. What "oBERT beats magnitude pruning under the same recipe" needs: the two methods'
answers to the same test examples, not two intervals against dense side by side.

Runs pair when they share the task, model, seed, fold and level; the difference is B − A on the full test set,
with its 95 % bootstrap interval and a two-sided p-value (twice the smaller one-sided tail)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from smcbench.errors import SmcBenchError
from smcbench.metrics import Metric
from smcbench.report import analysis, significance
from smcbench.report.analysis import metric_of
from smcbench.report.verdicts import _outcomes


@dataclass(frozen=True)
class Versus:
    task: str
    model: str
    sparsity: float
    a: float  # A's metric (mean over the paired seeds)
    b: float
    level: significance.Level  # delta = B − A, its interval, the one-sided p of "B worse"
    p_two_sided: float
    metric: Metric


def _pick(rows: list[dict], name: str) -> str:
    """The variant called `name`, or the one variant of the method called `name`."""
    variants = {r["variant"] for r in rows}
    if name in variants:
        return name
    of_method = sorted({r["variant"] for r in rows if r["method"] == name})
    if len(of_method) == 1:
        return of_method[0]
    if of_method:
        raise SmcBenchError(f"{name!r} ran as several variants here: name one of {', '.join(of_method)}")
    return ""


def versus(records: list[dict], a: str, b: str, resamples: int | None = None) -> list[Versus]:
    """B against A at every (task, model, level) where both ran with per-example outcomes."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["task"], r["model"])].append(r)
    out: list[Versus] = []
    found = False
    for (task, model), rows in sorted(groups.items()):
        rows = analysis.with_variants(rows)
        va, vb = _pick(rows, a), _pick(rows, b)
        if not (va and vb):
            continue
        found = True
        metric = Metric.of(rows[-1])
        runs: dict[tuple, dict[str, dict]] = defaultdict(dict)
        for r in rows:
            if r["variant"] in (va, vb):
                runs[(round(r["target_sparsity"], 3), r["seed"], r.get("fold"))][r["variant"]] = r
        by_level: dict[float, list[tuple[dict, dict]]] = defaultdict(list)
        for (level, _, _), both in sorted(runs.items()):
            if va in both and vb in both:
                by_level[level].append((both[va], both[vb]))
        for level, pairs in sorted(by_level.items()):
            outcomes = [(_outcomes(x), _outcomes(y)) for x, y in pairs]
            outcomes = [(x, y) for x, y in outcomes if x is not None and y is not None]
            if not outcomes:
                continue
            lv = significance.compare(outcomes, metric, level, resamples, where=f"{va} vs {vb} @ {level:.3f}")
            a_mean = sum(metric_of(x) for x, _ in pairs) / len(pairs)
            b_mean = sum(metric_of(y) for _, y in pairs) / len(pairs)
            out.append(Versus(task, model, level, a_mean, b_mean, lv, min(1.0, 2 * min(lv.p, lv.p_better)), metric))
    if not found:
        raise SmcBenchError(f"no task in these results has runs of both {a!r} and {b!r}")
    return out
