"""Numbers behind the report: curves, failing sparsity, mask overlap, weight change. Pure functions over
result records, masks and weights, so they can be tested on hand-made inputs."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from torch import Tensor

from smcbench.methods import is_reference, is_sparse
from smcbench.metrics import Metric

ACCURACY = Metric("accuracy", tolerance=0.01)


@dataclass(frozen=True)
class Point:
    sparsity: float
    mean: float
    std: float
    seeds: int


def metric_of(record: dict) -> float:
    """The value of the primary metric the record's task declares."""
    return Metric.of(record).value(record)


def with_variants(records: Iterable[dict]) -> list[dict]:
    """The records, each with `variant`: its method's name, plus the method settings that differ between runs of
    that method (e.g. Table 1's module subsets, `omp_after (include=...)`), so variants are never pooled like
    seeds. Settings every run of the method shares stay out of the name."""
    records = list(records)
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_method[r["method"]].append(_identity_settings(r))
    varying = {m: sorted(k for k in {k for s in settings for k in s}
                         if len({repr(s.get(k)) for s in settings}) > 1) for m, settings in by_method.items()}
    out = []
    for r in records:
        own = _identity_settings(r)
        # A setting left at its default is not recorded (run identity): the plain method name stands for it.
        shown = ", ".join(f"{k}={_setting_text(own[k])}" for k in varying[r["method"]] if own.get(k) is not None)
        out.append({**r, "variant": f"{r['method']} ({shown})" if shown else r["method"]})
    return out


def _identity_settings(record: dict) -> dict:
    """The method settings a run's id holds, and its method's version where it is not 1: runs of two versions of a
    method are variants, never pooled."""
    config = record.get("config") or {}
    settings = dict(config.get("settings") or {})
    if config.get("method_version", 1) != 1:
        settings["version"] = config["method_version"]
    return settings


def mixed_training(records: Iterable[dict]) -> list[str]:
    """The training settings that differ between these runs, each as `key: value (n runs), ...` (a setting a run
    left at its default is not in its identity: "default"); [] when every run trained alike."""
    trains = [(r.get("config") or {}).get("train") or {} for r in records]
    keys = sorted({k for t in trains for k in t if len({repr(x.get(k)) for x in trains}) > 1})
    out = []
    for key in keys:
        counts = Counter(_setting_text(t[key]) if key in t else "default" for t in trains)
        out.append(f"{key}: " + ", ".join(f"{value} ({n} run{'s' if n > 1 else ''})"
                                          for value, n in sorted(counts.items())))
    return out


def task_versions(records: Iterable[dict]) -> list[int]:
    """The versions of the task among these runs (records written before versions: 1)."""
    return sorted({(r.get("config") or {}).get("task_version", 1) for r in records})


def _setting_text(value: object) -> str:
    if isinstance(value, list | tuple):
        return "|".join(map(str, value))
    return str(value)


def curves(records: Iterable[dict], metric: str | None = None) -> dict[str, list[Point]]:
    """Per method variant (`with_variants`; the method's name where there is one variant), the primary metric (or
    the named one) vs target sparsity: mean and standard deviation over seeds (and folds). Records without the
    named metric are left out."""
    values: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if metric is not None and metric not in r["metrics"]:
            continue
        value = metric_of(r) if metric is None else float(r["metrics"][metric])
        values[r.get("variant", r["method"])][round(r["target_sparsity"], 3)].append(value)
    return {
        method: [Point(s, statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
                 for s, v in sorted(levels.items())]
        for method, levels in values.items()
    }


def method_curves(records: Iterable[dict]) -> tuple[list[dict], dict[str, list[Point]], list[Point] | None]:
    """(the records with their variants, the sparse methods' curves, the dense reference's points or None). The
    first dense variant is the reference (several: e.g. a model pretrained here vs from random weights)."""
    rows = with_variants(records)
    by_method = curves(rows)
    references = reference_variants(rows)
    dense = by_method.pop(references[0]) if references else None
    for other in {r["variant"] for r in rows if not is_sparse(r["method"], r["target_sparsity"])} - {*references[:1]}:
        by_method.pop(other)  # another reference, or a dense control: shown beside dense, never judged
    return rows, by_method, dense


def reference_variants(rows: list[dict]) -> list[str]:
    """The dense reference's variants (`with_variants` rows), the one compared with first."""
    return sorted({r["variant"] for r in rows if is_reference(r["method"])})


def controls(rows: list[dict]) -> dict[str, Point]:
    """The dense controls (runs of dense methods other than the reference, e.g. the equal-budget control of the
    After methods) by variant: mean over seeds and folds."""
    kept = [r for r in rows if not is_sparse(r["method"], r["target_sparsity"]) and not is_reference(r["method"])]
    return {variant: points[0] for variant, points in curves(kept).items()}


def baselines(rows: list[dict]) -> dict[str, float]:
    """The metric's baselines (Metric.baselines: scores of a shallow predictor on the same test) by name: their mean
    over the dense reference's runs (seeds and folds, as dense itself), where the records carry them."""
    references = reference_variants(rows)
    dense = [r for r in rows if references and r["variant"] == references[0]]
    if not dense:
        return {}
    names = Metric.of(dense[-1]).baselines
    return {name: statistics.fmean(float(r["metrics"][name]) for r in dense)
            for name in names if all(name in r["metrics"] for r in dense)}


def unbeaten(metric: Metric, dense: float | None, baselines: dict[str, float]) -> list[str]:
    """The baselines (by name, sorted) that the dense score does not beat in the metric's direction."""
    return [] if dense is None else sorted(b for b, v in baselines.items() if not metric.better(dense, v))


def dense_reference(points: list[Point], metric: Metric = ACCURACY) -> tuple[float, float | None, str]:
    """(dense mean, tolerance, how the tolerance was chosen). One dense seed: the metric's declared absolute
    tolerance (accuracy 0.01; BLEU in BLEU points); None where the task declares none (no verdict then)."""
    [p] = points
    if p.seeds > 1:
        return p.mean, p.std, f"the dense runs' standard deviation over {p.seeds} seeds ({p.std:.4f})"
    if metric.tolerance is None:
        return p.mean, None, (f"none: one dense seed gives no spread and the task declares no tolerance for "
                              f"{metric.name}, so no level is judged (run several seeds)")
    return p.mean, metric.tolerance, f"an absolute {metric.tolerance:g} (one dense seed: no spread to use)"


def failing_sparsity(points: list[Point], dense: float, tolerance: float,
                     metric: Metric = ACCURACY) -> tuple[float | None, float | None]:
    """(largest level whose metric stays within `tolerance` of dense with every lower level also within it,
    first level that is worse than dense by more than `tolerance`, in the metric's direction). None where there
    is no such level."""
    last_ok = None
    for p in sorted(points, key=lambda p: p.sparsity):
        if metric.worse_than(p.mean, dense, tolerance):
            return last_ok, p.sparsity
        last_ok = p.sparsity
    return last_ok, None


def jaccard(a: Tensor, b: Tensor) -> float:
    """|A ∩ B| / |A ∪ B| of the kept weights of two bool masks."""
    union = int((a | b).count_nonzero())
    return int((a & b).count_nonzero()) / union if union else 1.0


def mask_overlap(first: dict[str, Tensor], second: dict[str, Tensor]) -> tuple[float, dict[str, float]]:
    """Overall and per-layer Jaccard overlap of the kept weights. Two independent random masks at sparsity s
    overlap (1 − s) / (1 + s) on average: the reference line for "different masks"."""
    names = [n for n in first if n in second]
    inter = sum(int((first[n] & second[n]).count_nonzero()) for n in names)
    union = sum(int((first[n] | second[n]).count_nonzero()) for n in names)
    return (inter / union if union else 1.0), {n: jaccard(first[n], second[n]) for n in names}


def random_overlap(sparsity: float) -> float:
    return (1 - sparsity) / (1 + sparsity)
