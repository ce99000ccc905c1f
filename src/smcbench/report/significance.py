"""Paired verdicts: is a sparse run worse than dense on the same test examples, by how much, and what could the
test set have resolved?

For one method, each level is compared with dense on the per-example outcomes (smcbench.outcomes), each sparse
seed paired with the dense run of its own seed:
- the difference in the primary metric (sparse − dense) and its 95 % interval from a paired bootstrap: examples
  resampled with replacement, the same draw for both runs; with several seeds (or folds) two levels, the seed
  pairs resampled first, then the examples within each pair. Accuracy-type outcomes are resampled through their
  2×2 table (a multinomial draw of the four cells is exactly a resample of the examples); BLEU through sacreBLEU's
  sentence statistics, summed per direction and scored by sacreBLEU, averaged over directions as the metric is;
- a one-sided p-value for "sparse is worse" (the bootstrap distribution centred on the observed difference);
- Holm's step-down correction across the method's levels, so a method that in truth equals dense is declared
  failing anywhere in its ladder at most α of the time (tests/test_significance.py shows it by simulation, and the
  power to find a real 5-point drop on 1,000 examples).

A level is `fails` when its corrected test rejects, `holds` when not and the whole interval lies above −margin
(the metric's declared tolerance: a drop too small to matter), `inconclusive` otherwise: the test set could not
tell. The failing sparsity is the lowest failing level. Where none fails, the resolution says which drops the test
set could have detected: (z_{1−α/m} + z_{power}) × the bootstrap standard error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Literal

import numpy as np

from smcbench.errors import SmcBenchError
from smcbench.metrics import Metric
from smcbench.outcomes import Outcomes

ALPHA = 0.05
POWER = 0.8
RESAMPLES = {"binary": 10_000, "bleu": 1_000}  # sacreBLEU's own default for BLEU
RULE = ("paired bootstrap on per-example outcomes (each sparse seed with its dense seed), one-sided, Holm-corrected "
        f"across each method's levels, α = {ALPHA}")
Verdict = Literal["fails", "holds", "inconclusive"]


@dataclass(frozen=True)
class Level:
    """One level of a method against dense."""

    sparsity: float
    delta: float  # sparse − dense, in the metric's units
    low: float  # the 95 % interval of delta
    high: float
    p: float  # one-sided: sparse worse than dense
    se: float  # the bootstrap standard error of delta
    p_holm: float = math.nan
    mde: float = math.nan  # the smallest drop the test could detect (power 0.8, the ladder's α)
    verdict: Verdict = "inconclusive"
    lost: int = 0  # examples dense gets right and the sparse run wrong (binary outcomes, summed over seeds)
    gained: int = 0  # the reverse
    examples: int = 0  # per seed
    seeds: int = 1
    kind: str = "binary"  # the outcomes compared (smcbench.outcomes): lost / gained exist for binary ones
    p_better: float = math.nan  # one-sided, the other tail: sparse better than dense (method against method)


@dataclass(frozen=True)
class Ladder:
    """A method's levels with their verdicts, its failing level and what the test set could resolve."""

    levels: list[Level]
    failing: Level | None
    resolution: float  # the largest of the levels' detectable drops
    rule: str = RULE


def _paired(dense: Outcomes, sparse: Outcomes, where: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per group, the two runs' values on the same example ids, in one order."""
    if dense.kind != sparse.kind or set(dense.groups) != set(sparse.groups):
        raise SmcBenchError(f"{where}: the outcomes are of different kinds or groups and cannot be paired")
    out = []
    for name, d in dense.groups.items():
        s = sparse.groups[name]
        if set(d.ids) != set(s.ids):
            raise SmcBenchError(f"{where}: group {name!r} holds other examples in the two runs ({len(d.ids)} vs "
                                f"{len(s.ids)}): runs of one task configuration share their test examples")
        order = {i: k for k, i in enumerate(s.ids)}
        take = [order[i] for i in d.ids]
        out.append((np.asarray(d.values), np.asarray(s.values)[take]))
    return out


def _bleu_of(stats: np.ndarray, settings: dict) -> np.ndarray:
    """Corpus BLEU of each row of summed statistics (…, 10), scored by sacreBLEU."""
    from sacrebleu.metrics import BLEU

    flat = stats.reshape(-1, stats.shape[-1])
    scores = [BLEU.compute_bleu(correct=list(row[2:6]), total=list(row[6:10]), sys_len=int(row[0]),
                                ref_len=int(row[1]), smooth_method=settings.get("smooth_method", "exp"),
                                smooth_value=settings.get("smooth_value"),
                                effective_order=settings.get("effective_order", False)).score for row in flat]
    return np.asarray(scores).reshape(stats.shape[:-1])


def _statistic(kind: str, groups: list[tuple[np.ndarray, np.ndarray]], settings: dict) -> tuple[float, float]:
    """The metric of (dense, sparse) on the full test set."""
    if kind == "binary":
        d = np.concatenate([g[0] for g in groups])
        s = np.concatenate([g[1] for g in groups])
        return float(d.mean()), float(s.mean())
    d = np.mean([_bleu_of(g[0].sum(0), settings) for g in groups])
    s = np.mean([_bleu_of(g[1].sum(0), settings) for g in groups])
    return float(d), float(s)


def _resample_pair(kind: str, groups: list[tuple[np.ndarray, np.ndarray]], settings: dict, draws: int,
                   rng: np.random.Generator) -> np.ndarray:
    """`draws` bootstrap replicates of sparse − dense for one seed pair (examples resampled, paired)."""
    if kind == "binary":
        d = np.concatenate([g[0] for g in groups]).astype(bool)
        s = np.concatenate([g[1] for g in groups]).astype(bool)
        n = len(d)
        cells = np.array([(d & s).sum(), (d & ~s).sum(), (~d & s).sum(), (~d & ~s).sum()]) / n
        counts = rng.multinomial(n, cells, size=draws)
        return (counts[:, 2] - counts[:, 1]) / n  # (sparse right only − dense right only) / n
    total = np.zeros(draws)
    for dense, sparse in groups:
        idx = rng.integers(0, len(dense), size=(draws, len(dense)))
        total += _bleu_of(sparse[idx].sum(1), settings) - _bleu_of(dense[idx].sum(1), settings)
    return total / len(groups)


def compare(pairs: list[tuple[Outcomes, Outcomes]], metric: Metric, sparsity: float, resamples: int | None = None,
            seed: int = 0, where: str = "") -> Level:
    """One level: `pairs` holds (dense, sparse) outcomes per seed. Returns the difference, its interval and the
    one-sided p-value (verdicts come from `ladder`)."""
    if not pairs:
        raise SmcBenchError(f"{where}: no sparse run has a dense run of its seed to be paired with")
    kind = pairs[0][0].kind
    settings = pairs[0][0].bleu
    paired = [_paired(d, s, where) for d, s in pairs]
    observed = [_statistic(kind, g, settings) for g in paired]
    delta = float(np.mean([s - d for d, s in observed]))
    draws = resamples or RESAMPLES[kind]
    rng = np.random.default_rng(seed)
    k = len(paired)
    if k == 1:
        replicates = _resample_pair(kind, paired[0], settings, draws, rng)
    else:  # two levels: seed pairs with replacement, then examples within each chosen pair
        chosen = rng.integers(0, k, size=(draws, k))
        replicates = np.zeros(draws)
        for j in range(k):
            uses = chosen == j
            count = int(uses.sum())
            if count:
                values = _resample_pair(kind, paired[j], settings, count, rng)
                replicates += np.bincount(np.nonzero(uses)[0], weights=values, minlength=draws)
        replicates /= k
    sign = 1.0 if metric.higher_is_better else -1.0  # "worse" is a lower value unless lower is better
    gain, gains = sign * delta, sign * replicates
    p = (1 + int(np.sum(gains - gain <= gain))) / (draws + 1)
    p_better = (1 + int(np.sum(gains - gain >= gain))) / (draws + 1)
    low, high = np.quantile(replicates, [0.025, 0.975])
    lost = gained = 0
    if kind == "binary":
        for groups in paired:
            d = np.concatenate([g[0] for g in groups]).astype(bool)
            s = np.concatenate([g[1] for g in groups]).astype(bool)
            lost += int((d & ~s).sum())
            gained += int((~d & s).sum())
    examples = sum(len(g[0]) for g in paired[0])
    return Level(sparsity, delta, float(low), float(high), p, float(np.std(replicates)), lost=lost, gained=gained,
                 examples=examples, seeds=k, kind=kind, p_better=p_better)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def ladder(levels: list[Level], metric: Metric, margin: float | None = None, alpha: float = ALPHA) -> Ladder:
    """Verdicts for a method's levels (each from `compare`): Holm across them, the failing level, the resolution."""
    levels = sorted(levels, key=lambda x: x.sparsity)
    if not levels:
        return Ladder([], None, math.nan)
    adjusted = holm([x.p for x in levels])
    z = NormalDist().inv_cdf(1 - alpha / len(levels)) + NormalDist().inv_cdf(POWER)
    margin = metric.tolerance if margin is None else margin
    out = []
    sign = 1.0 if metric.higher_is_better else -1.0
    for level, p_holm in zip(levels, adjusted, strict=True):
        worst = min(sign * level.low, sign * level.high)  # the interval's worst end, as a gain
        if p_holm <= alpha:
            verdict: Verdict = "fails"
        elif margin is not None and worst >= -margin:
            verdict = "holds"
        else:
            verdict = "inconclusive"
        out.append(replace(level, p_holm=p_holm, mde=z * level.se, verdict=verdict))
    failing = next((x for x in out if x.verdict == "fails"), None)
    return Ladder(out, failing, max(x.mde for x in out))
