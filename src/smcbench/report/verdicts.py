"""Each method's verdict on one (task, model): the paired rule on per-example outcomes (report.significance) or,
on request or where outcomes are missing, the paper's rule (a level fails when its mean is worse than dense's by
the dense seeds' spread, or by the metric's tolerance with one seed). A group is never judged by a silent mix:
a method judged by the paper's rule because a run lacks outcomes says so."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from smcbench import outcomes
from smcbench.methods import is_reference
from smcbench.methods.base import stage_of
from smcbench.metrics import Metric
from smcbench.outcomes import Outcomes
from smcbench.report import analysis, significance

Rule = Literal["paired", "paper"]
RULES: tuple[Rule, ...] = ("paired", "paper")
PAPER_RULE = ("the paper's: the first level whose mean is worse than dense by the dense seeds' standard deviation "
              "(one seed: the metric's tolerance)")


@dataclass
class MethodVerdict:
    variant: str
    rule: Rule  # the rule that judged this method
    failing: float | None  # the first failing level (None: none of its levels fails)
    highest: float  # the highest level it ran
    ladder: significance.Ladder | None = None  # the paired rule's levels
    paper_failing: float | None = None  # the paper's rule, beside it for comparison
    note: str = ""  # why the paper's rule was used where the paired one was asked for
    judged: bool = True  # False: the paper's rule had no tolerance to judge by (one seed, none declared)
    stage: str = ""  # when the method prunes (methods.base.Method.stage): after, during, before, post-training
    lowest: float | None = None  # the lowest level it ran

    @property
    def interval(self) -> tuple[float, float] | None:
        """The failing level's 95 % interval of sparse − dense (paired rule)."""
        if self.ladder is None or self.ladder.failing is None:
            return None
        return self.ladder.failing.low, self.ladder.failing.high


@dataclass
class GroupVerdicts:
    rule: Rule
    metric: Metric
    dense: float | None
    methods: dict[str, MethodVerdict] = field(default_factory=dict)
    describe: dict[str, str] = field(default_factory=dict)  # example id → what it is (the dense run's texts)
    controls: dict[str, float] = field(default_factory=dict)  # dense control variant → its mean (never judged)
    baselines: dict[str, float] = field(default_factory=dict)  # the metric's shallow baselines (analysis.baselines)


_CACHE: dict[tuple[str, int], Outcomes] = {}  # (path, modification time): each file read once per report


def _outcomes(record: dict) -> Outcomes | None:
    path = Path(record.get("dir", "")) / outcomes.OUTCOMES
    if not path.is_file():
        return None
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _CACHE:
        _CACHE[key] = outcomes.read(path)
    return _CACHE[key]


def judge(rows: list[dict], rule: Rule = "paired", resamples: int | None = None) -> GroupVerdicts:
    """The verdicts of every sparse method variant of one (task, model) group (`rows` from
    analysis.method_curves: each with its `variant`)."""
    metric = Metric.of(rows[-1])
    varied, by_method, dense_points = analysis.method_curves(rows)
    out = GroupVerdicts(rule, metric, dense_points[0].mean if dense_points else None,
                        controls={v: p.mean for v, p in analysis.controls(rows).items()},
                        baselines=analysis.baselines(varied))
    if not dense_points:
        return out
    mean, tolerance, _ = analysis.dense_reference(dense_points, metric)
    references = analysis.reference_variants(rows)
    dense_runs = {(r["seed"], r.get("fold")): r for r in rows if r["variant"] == references[0]}
    for r in dense_runs.values():
        o = _outcomes(r)
        if o is not None:
            for name, group in o.groups.items():
                if group.texts:
                    out.describe.update({f"{name}:{i}": t for i, t in zip(group.ids, group.texts, strict=True)})
    for variant, points in sorted(by_method.items()):
        paper = None if tolerance is None else analysis.failing_sparsity(points, mean, tolerance, metric)[1]
        first = next(r for r in rows if r["variant"] == variant)
        stage = stage_of(first["method"], (first.get("config") or {}).get("settings") or {})
        levels = [p.sparsity for p in points]
        verdict = MethodVerdict(variant, "paper", paper, max(levels), paper_failing=paper,
                                judged=tolerance is not None, stage=stage, lowest=min(levels))
        if rule == "paired":
            ladder, note = _paired(rows, variant, dense_runs, metric, resamples)
            if ladder is not None:
                failing = ladder.failing.sparsity if ladder.failing else None
                verdict = MethodVerdict(variant, "paired", failing, verdict.highest, ladder, paper, stage=stage,
                                        lowest=verdict.lowest)
            else:
                verdict.note = note
        out.methods[variant] = verdict
    return out


def _paired(rows: list[dict], variant: str, dense_runs: dict, metric: Metric,
            resamples: int | None) -> tuple[significance.Ladder | None, str]:
    by_level: dict[float, list[dict]] = defaultdict(list)
    for r in rows:
        if r["variant"] == variant:
            by_level[round(r["target_sparsity"], 3)].append(r)
    levels = []
    for level, runs in sorted(by_level.items()):
        pairs = []
        for r in runs:
            dense = dense_runs.get((r["seed"], r.get("fold")))
            if dense is None:
                continue  # a seed without its dense run: nothing to pair with
            d, s = _outcomes(dense), _outcomes(r)
            if d is None or s is None:
                which = "the dense run" if d is None else f"its run at {level:.3f}"
                return None, (f"judged by the paper's rule: {which} (seed {r['seed']}) has no per-example outcomes "
                              "(finished before smc-bench kept them)")
            pairs.append((d, s))
        if not pairs:
            return None, "judged by the paper's rule: no run has the dense run of its seed to be paired with"
        levels.append(significance.compare(pairs, metric, level, resamples, seed=len(levels),
                                           where=f"{variant} @ {level:.3f}"))
    return significance.ladder(levels, metric), ""


def lost_examples(rows: list[dict], variant: str, level: float, describe: dict[str, str],
                  count: int = 3) -> list[str]:
    """Up to `count` examples the dense run gets right and `variant`'s run at `level` gets wrong (first seed), as
    a reader sees them (binary outcomes)."""
    runs = [r for r in rows if r["variant"] == variant and abs(r["target_sparsity"] - level) < 1e-6]
    dense = [r for r in rows if is_reference(r["method"])]
    for r in sorted(runs, key=lambda x: (x["seed"], x.get("fold") or 0)):
        ref = next((d for d in dense if d["seed"] == r["seed"] and d.get("fold") == r.get("fold")), None)
        d, s = (_outcomes(ref), _outcomes(r)) if ref else (None, None)
        if d is None or s is None or d.kind != "binary":
            continue
        out = []
        for name, group in d.groups.items():
            sparse = dict(zip(s.groups[name].ids, s.groups[name].values, strict=True))
            for i, v in zip(group.ids, group.values, strict=True):
                if v and not sparse.get(i, 1) and len(out) < count:
                    out.append(f"{i}: {describe.get(f'{name}:{i}', '(no text kept)')}")
        return out
    return []


def export_columns(groups: dict[tuple[str, str], GroupVerdicts], rows: list[dict]) -> dict[str, dict]:
    """Run id → the verdict columns the CSV/Parquet export carries: the level's verdict, its difference and
    interval and corrected p (paired rule), the method's failing sparsity, the rule."""
    out = {}
    for r in analysis.with_variants(rows):
        g = groups.get((r["task"], r["model"]))
        v = g.methods.get(r["variant"]) if g else None
        if v is None:
            continue
        columns = {"verdict_rule": v.rule, "failing_sparsity": v.failing}
        if v.ladder is not None:
            level = next((x for x in v.ladder.levels if abs(x.sparsity - round(r["target_sparsity"], 3)) < 1e-6),
                         None)
            if level is not None:
                columns.update({"verdict": level.verdict, "delta": level.delta, "delta_low": level.low,
                                "delta_high": level.high, "p_holm": level.p_holm})
        out[r["run_id"]] = columns
    return out
