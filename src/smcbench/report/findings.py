"""The paper's findings, checked on a report's verdicts: which appear at this scale, which do not, and which the runs
cannot tell (too few stages, tasks or levels). Each check reads the first failing levels (report.verdicts); a method
that never fails counts as failing above the highest level it ran, so "never" ranks after every level."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

from smcbench.report import analysis
from smcbench.report.verdicts import GroupVerdicts, MethodVerdict

MODERATE = 0.36  # the paper's finding 1: on CSQA every method fails by 36 % (several datasets from 20 %)


def _rank(v: MethodVerdict) -> float:
    return v.failing if v.failing is not None else v.highest + 1e-3


def _text(levels: list[float], highest: float) -> str:
    m = statistics.median(levels)
    return f"> {highest:.3f}" if m > highest else f"{m:.3f}"


def _judged(group: GroupVerdicts) -> list[MethodVerdict]:
    return [v for v in group.methods.values() if v.judged]


def unbeaten(group: GroupVerdicts) -> str:
    """", dense no better than <baseline> <value>" for the metric's baselines (Metric.baselines) the dense model does
    not beat, else "": there, nothing the model adds over the data alone is large enough to be seen lost."""
    names = [f"{b} {group.baselines[b]:.3f}" for b in analysis.unbeaten(group.metric, group.dense, group.baselines)]
    return f"; dense {group.dense:.3f} no better than {', '.join(names)}" if names else ""


def moderate(groups: dict[tuple[str, str], GroupVerdicts], label) -> list[str]:
    """Finding 1: how many methods fail at or below 36 % (and 20 %) of sparsity."""
    rows = []
    for key, g in sorted(groups.items()):
        methods = _judged(g)
        if methods:
            cells = [sum(v.failing is not None and v.failing <= level + 1e-9 for v in methods)
                     for level in (0.2, MODERATE, max(v.highest for v in methods))]
            rows.append(f"| {label(key)} | " + " | ".join(f"{c} of {len(methods)}" for c in cells)
                        + f" ({max(v.highest for v in methods):.3f}{unbeaten(g)}) |")
    return (["| task | methods failing by 20 % | by 36 % | by the highest level run |", "|---|---|---|---|", *rows]
            if rows else [])


def stages(groups: dict[tuple[str, str], GroupVerdicts], label) -> list[str]:
    """Finding 3: After methods fail later than Before methods (median first failing level of each stage)."""
    rows = []
    for key, g in sorted(groups.items()):
        by_stage = defaultdict(list)
        for v in _judged(g):
            by_stage[v.stage].append(v)
        before, after = by_stage.get("before", []), by_stage.get("after", [])
        if not before or not after:
            continue
        highest = max(v.highest for v in (*before, *after))
        b, a = statistics.median(map(_rank, before)), statistics.median(map(_rank, after))
        seen = ("yes" if a > b else "no: Before fails later" if a < b else
                "cannot tell: neither fails up to the highest level run" if a > highest else "no: the same level")
        flag = unbeaten(g)
        if flag:  # the stages' order is then about the data's shallow signal, not the model
            seen = f"cannot tell{flag}"
        cells = [_text([_rank(v) for v in before], highest), _text([_rank(v) for v in after], highest)]
        during = by_stage.get("during", [])
        cells.append(_text([_rank(v) for v in during], highest) if during else "-")
        rows.append(f"| {label(key)} | {' | '.join(cells)} | {seen} |")
    if not rows:
        return []
    return ["| task | Before (median first failing level) | After | During | After fails later? |",
            "|---|---|---|---|---|", *rows]


def difficulty(groups: dict[tuple[str, str], GroupVerdicts], label) -> list[str]:
    """Finding 2: within a family (and model), the harder task (dense less above chance) fails at a lower level
    (median first failing level over the methods both tasks ran)."""
    families = defaultdict(list)
    for (task, model), g in groups.items():
        if g.dense is not None and _judged(g):
            families[(task.split("/")[0], model)].append((task, g))
    rows = []
    for (family, model), tasks in sorted(families.items()):
        if len(tasks) < 2:
            continue
        shared = set.intersection(*({v.variant for v in _judged(g)} for _, g in tasks))
        if not shared:
            continue

        def above_chance(g: GroupVerdicts) -> float:
            """How easy the task is for the dense model: its share of the way from chance to perfect (a metric
            without a chance level, e.g. BLEU: the dense score itself)."""
            if g.metric.chance is None:
                return g.dense if g.metric.higher_is_better else -g.dense
            return (g.dense - g.metric.chance) / (1.0 - g.metric.chance)

        ordered = sorted(tasks, key=lambda t: above_chance(t[1]))  # hardest first
        ranks = [[_rank(g.methods[m]) for m in shared] for _, g in ordered]
        highest = [max(g.methods[m].highest for m in shared) for _, g in ordered]
        medians = [statistics.median(r) for r in ranks]
        pairs = list(zip(medians, medians[1:], strict=False))
        if all(a < b for a, b in pairs):
            seen = "yes"
        elif all(a == b for a, b in pairs):
            # Equal medians above every level run: the median method failed in no task; at the lowest level run: it
            # failed at once in every task. Either way the runs cannot order them.
            lowest = min(g.methods[m].lowest or 0.0 for _, g in ordered for m in shared)
            seen = ("cannot tell: the median method fails in none up to the highest level run"
                    if all(m > h for m, h in zip(medians, highest, strict=True)) else
                    "cannot tell: the median method fails at the lowest level run in every task"
                    if medians[0] <= lowest + 1e-9 else "no: the same level")
        else:
            seen = "no" if all(a >= b for a, b in pairs) else "partly"
        order = ", ".join(f"{t} (dense {g.dense:.3f}: {_text(r, h)})"
                          for (t, g), r, h in zip(ordered, ranks, highest, strict=True))
        rows.append(f"| {family} / {model} | {len(shared)} | {order} | {seen} |")
    if not rows:
        return []
    return ["| family / model | methods | tasks, hardest first (dense: median first failing level) | harder fails "
            "earlier? |", "|---|---|---|---|", *rows]


@dataclass(frozen=True)
class Lazy:
    """One task's lazy-regime figures: the dense fine-tune's median relative weight change, and the most similar
    masks of a During and an After method (their Jaccard overlap at the highest level both ran, seed 0)."""

    task: str
    weight_change: float | None
    level: float | None = None
    during: str = ""
    after: str = ""
    overlap: float | None = None
    random: float | None = None


NEAR_IDENTICAL = 0.95  # Jaccard overlap above which two methods' masks count as the same mask


def lazy(rows: list[Lazy]) -> list[str]:
    """Finding 4: fine-tuning stays near the pretrained weights (small relative change), so pruning during training
    and pruning after it keep nearly the same weights."""
    lines = []
    for r in rows:
        if r.weight_change is None and r.overlap is None:
            continue  # nothing to tell for this task
        change = f"{r.weight_change:.3f}" if r.weight_change is not None else "not recorded"
        if r.overlap is None:
            lines.append(f"| {r.task} | {change} | - | - | no During and After masks at one level |")
            continue
        seen = "yes" if r.overlap >= NEAR_IDENTICAL else "no"
        lines.append(f"| {r.task} | {change} | {r.during} vs {r.after} at {r.level:.3f} | {r.overlap:.3f} "
                     f"(random {r.random:.3f}) | {seen} |")
    if not lines:
        return []
    return [f"The signature: the dense fine-tune moves each tensor little, and a During method's mask is the After "
            f"method's (Jaccard overlap ≥ {NEAR_IDENTICAL}).\n",
            "| task | dense fine-tune: median relative weight change | most similar During and After masks | "
            "overlap | near-identical? |", "|---|---|---|---|---|", *lines]


def sections(groups: dict[tuple[str, str], GroupVerdicts], label,
             lazy_rows: list[Lazy] = ()) -> list[tuple[str, str]]:
    """(title, text) of each finding the runs can tell, read from the verdicts (first failing levels; a method
    that never fails ranks above its highest level) and, for the lazy regime, from each task's masks and weight
    change (`lazy_rows`; each task's own sections have the details)."""
    out = []
    for title, lines in (("1. every method fails at moderate sparsity", moderate(groups, label)),
                         ("2. harder tasks fail earlier", difficulty(groups, label)),
                         ("3. After-training pruning fails later than before-training", stages(groups, label)),
                         ("4. the lazy regime", lazy(list(lazy_rows)))):
        if lines:
            out.append((title, "\n".join(lines)))
    return out
