"""How many weights to prune where, and which ones: exact selection of the lowest scores.

Every allocation ends in groups of tensors with a number k of weights to prune in each group (global: one group
of all selected tensors; uniform and ERK: one group per tensor). Within a group exactly k weights are pruned: the
k lowest scores, ties broken by tensor order then flat index (earlier first), weights already pruned first (they
stay pruned). `k = round(s·N)` rounds half up.

The global cut never concatenates or sorts all scores. Scores are computed chunk by chunk: a seeded, stratified
sample brackets the k-th smallest score, one counting pass finds how many scores fall below the bracket and collects
the few inside it (a compiled loop, sparsity/band.c, where a C compiler is present; torch operations otherwise), and
`kthvalue` on those gives the exact threshold; a second pass writes the masks. Extra memory is
the bracket's contents (≈1 % of the weights at most) and chunk temporaries. A bisection over float32 values
takes over when the bracket misses (a vanishingly rare sample) or when heavy ties fill it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from smcbench.errors import SmcBenchError
from smcbench.sparsity import native
from smcbench.sparsity.scores import Score

CHUNK = 1 << 18  # elements per chunk: 1 MiB of float32 temporaries, so each pass stays in cache
SAMPLE = 1 << 19  # scores sampled to bracket the threshold
SMALL_GROUP = 1 << 22  # groups up to this size are scored whole and cut with kthvalue directly
_MIN_BAND = 1 << 20  # the bracket buffer's smallest capacity (floats)
_BRACKET_Z = 5.0  # half-width of the bracket in standard deviations of the sample quantile (miss: ~1e-6)


@dataclass(frozen=True)
class Slot:
    """One tensor of a group: its name, weight and bool mask (True = kept)."""

    name: str
    weight: Tensor
    mask: Tensor


@dataclass(frozen=True)
class Cut:
    """Prune every score below `threshold`, plus the first `ties` scores equal to it (tensor order, flat index).

    `tie_chunks`, when known, maps (tensor number, chunk start) to how many scores equal the threshold there, so
    the mask pass looks for ties only in those chunks.
    """

    threshold: float
    ties: int
    tie_chunks: dict[tuple[int, int], int] | None = None


def target_count(sparsity: float, numel: int) -> int:
    """round(s·N), half up: the number of weights a group of N prunes at sparsity s."""
    return int(math.floor(sparsity * numel + 0.5))


def check_sparsity(sparsity: float) -> float:
    if not isinstance(sparsity, int | float) or not math.isfinite(sparsity) or not 0.0 <= sparsity < 1.0:
        raise SmcBenchError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def _chunks(numel: int) -> list[tuple[int, int]]:
    return [(a, min(a + CHUNK, numel)) for a in range(0, numel, CHUNK)]


def _scores(score: Score, slot: Slot, index: slice | Tensor, has_pruned: bool) -> Tensor:
    sc = score.flat(slot.name, slot.weight, index)
    if has_pruned:
        # Weights already pruned rank lowest, so a higher sparsity never revives them.
        sc = sc.masked_fill(~slot.mask.reshape(-1)[index], -math.inf)
    return sc


def _nan_error(slot: Slot) -> SmcBenchError:
    return SmcBenchError(
        f"NaN in the pruning scores of {slot.name!r}: check the weights and gradients (a diverged run?) "
        "before pruning"
    )


class _Group:
    def __init__(self, slots: list[Slot], score: Score) -> None:
        self.slots = slots
        self.score = score
        self.numel = sum(s.mask.numel() for s in slots)
        self.pruned = [s.mask.numel() - int(s.mask.count_nonzero()) for s in slots]

    def chunk_scores(self, check_nan: bool = True):
        """Yield (tensor number, start, stop, scores) for every chunk of every tensor."""
        for i, (slot, pruned) in enumerate(zip(self.slots, self.pruned, strict=True)):
            for a, b in _chunks(slot.mask.numel()):
                sc = _scores(self.score, slot, slice(a, b), pruned > 0)
                # A sum is NaN if any score is (or if +inf meets -inf): only then pay for the exact check.
                if check_nan and torch.isnan(sc.sum()) and torch.isnan(sc).any():
                    raise _nan_error(slot)
                yield i, a, b, sc

    def native_chunks(self):
        """Yield (tensor number, start, stop, values, absval, kept) for every chunk, what the compiled passes read:
        the weights themselves with absval (the score is |w|; `kept` marks weights already pruned, else None), or
        the computed scores. NaN is left to the pass to count."""
        for i, (slot, pruned) in enumerate(zip(self.slots, self.pruned, strict=True)):
            raw = self.score.abs_of(slot.name, slot.weight)
            for a, b in _chunks(slot.mask.numel()):
                if raw is None:
                    yield i, a, b, _scores(self.score, slot, slice(a, b), pruned > 0), False, None
                else:
                    yield i, a, b, raw[a:b], True, slot.mask.view(-1)[a:b] if pruned else None

    def count(self, below: float, inclusive: bool) -> int:
        total = 0
        for _, _, _, sc in self.chunk_scores():
            total += int((sc <= below if inclusive else sc < below).count_nonzero())
        return total


def _bracket(group: _Group, k: int) -> tuple[float, float]:
    """Sample scores and return [lo, hi] that contains the k-th smallest with overwhelming probability.

    One score from each of m equal strata of the flat order: positions come out sorted (no sort of m indices), and
    the count of sampled scores below any value has at most the variance of m uniform draws, so the bracket's
    half-width (in sample-quantile standard deviations) holds as for a simple random sample."""
    n = group.numel
    m = min(SAMPLE, n)
    gen = torch.Generator().manual_seed(0x5EED)
    starts = torch.arange(m + 1, dtype=torch.int64) * n // m
    positions = starts[:-1] + (torch.rand(m, dtype=torch.float64, generator=gen) * starts.diff()).long()
    samples = []
    start = 0
    for slot, pruned in zip(group.slots, group.pruned, strict=True):
        stop = start + slot.mask.numel()
        lo_i, hi_i = torch.searchsorted(positions, torch.tensor([start, stop])).tolist()
        if hi_i > lo_i:
            samples.append(_scores(group.score, slot, positions[lo_i:hi_i] - start, pruned > 0))
        start = stop
    # NaN ranks last here; the counting pass that follows names the tensor that has it.
    sample = torch.cat(samples)
    q = k / n
    half = _BRACKET_Z * math.sqrt(max(q * (1 - q), 1.0 / m) / m)
    lo = -math.inf if q - half <= 0 else float(sample.kthvalue(min(m, int(math.floor((q - half) * m)) + 1)).values)
    hi = math.inf if q + half >= 1 else float(sample.kthvalue(min(m, int(math.ceil((q + half) * m)) + 1)).values)
    return lo, hi


_M31 = 0x7FFFFFFF


def _key(value: float) -> int:
    """Order-preserving int for a float32: a < b as floats iff key(a) < key(b) (±0 aside)."""
    bits = int(torch.tensor([value], dtype=torch.float32).view(torch.int32))
    return bits ^ _M31 if bits < 0 else bits


def _value(key: int) -> float:
    bits = key ^ _M31 if key < 0 else key
    return float(torch.tensor([bits], dtype=torch.int32).view(torch.float32))


def _bisect(group: _Group, k: int, lo: float, hi: float) -> Cut:
    """Smallest float32 T in [lo, hi] with count(score <= T) >= k, by bisection over float32 bit patterns."""
    a, b = _key(lo), _key(hi)
    while a < b:
        mid = (a + b) // 2
        if group.count(_value(mid), inclusive=True) >= k:
            b = mid
        else:
            a = mid + 1
    threshold = _value(a)
    return Cut(threshold, k - group.count(threshold, inclusive=False))


def find_cut(group: _Group, k: int) -> Cut:
    """The exact cut that prunes the k lowest scores of the group. Raises on NaN scores; writes nothing."""
    if k == 0:
        return Cut(-math.inf, 0)
    if group.numel <= SMALL_GROUP:
        scores = torch.cat([sc for _, _, _, sc in group.chunk_scores()])
        threshold = float(scores.kthvalue(k).values)
        return Cut(threshold, k - int((scores < threshold).count_nonzero()))

    lo, hi = _bracket(group, k)
    # Scores inside [lo, hi] go into one buffer allocated up front: small tensors kept between the chunks'
    # temporaries fragment the heap, and every chunk then faults in fresh pages (5x slower, +1 GB at 350M).
    expected = 2 * _BRACKET_Z * group.numel / math.sqrt(SAMPLE)
    band = torch.empty(int(2.5 * expected) + _MIN_BAND, dtype=torch.float32)
    pieces: list[tuple[int, int, int, int]] | None = []  # (tensor number, chunk start, band start, band stop)
    n_lt = n_le = used = 0
    # The compiled pass (sparsity/band.c) where the scores are on the CPU (they live where their weights do; the
    # band buffer always is); else six torch operations a chunk.
    fast = all(native.band_available(s.weight) for s in group.slots)
    chunks = group.native_chunks() if fast else ((*c, False, None) for c in group.chunk_scores())
    for i, a, _, sc, absval, kept in chunks:
        if fast:
            c_lt, c_in, nans, fits = native.band(sc, lo, hi, band[used:] if pieces is not None else band[:0],
                                                 absval, kept)
            if nans:
                raise _nan_error(group.slots[i])
            c_le = c_lt + c_in
        else:
            lt = sc < lo
            inside = sc <= hi
            c_lt = int(lt.count_nonzero())
            c_le = int(inside.count_nonzero())
            fits = used + c_le - c_lt <= band.numel()
            if pieces is not None and fits and c_le > c_lt:
                inside ^= lt
                band[used : used + c_le - c_lt] = sc[inside]
        n_lt += c_lt
        n_le += c_le
        if pieces is not None and c_le > c_lt:
            if not fits:
                pieces = None  # heavy ties: too many to hold; bisect instead
            else:
                pieces.append((i, a, used, used + c_le - c_lt))
                used += c_le - c_lt
    if not n_lt < k <= n_le:
        # The sample missed (or the band was dropped): exact bisection over all float32 values.
        return _bisect(group, k, -math.inf, math.inf) if n_lt >= k else _bisect(group, k, hi, math.inf)
    if pieces is not None:
        values = band[:used]
        threshold = float(values.kthvalue(k - n_lt).values)
        tie_chunks = {}
        for i, a, start, stop in pieces:
            equal = int((values[start:stop] == threshold).count_nonzero())
            if equal:
                tie_chunks[(i, a)] = equal
        return Cut(threshold, k - n_lt - int((values < threshold).count_nonzero()), tie_chunks)
    if lo == hi:
        return Cut(lo, k - n_lt)
    return _bisect(group, k, lo, hi)


def apply_cut(group: _Group, cut: Cut) -> None:
    """Clear mask bits below the cut and the first `cut.ties` equal to it. Masks only lose bits."""
    ties = cut.ties
    fast = all(native.band_available(s.weight) for s in group.slots)  # scores live where their weights do
    chunks = group.native_chunks() if fast else ((*c, False, None) for c in group.chunk_scores(check_nan=False))
    for i, a, b, values, absval, _ in chunks:
        mask = group.slots[i].mask.view(-1)[a:b]
        tied = ties and (cut.tie_chunks is None or (i, a) in cut.tie_chunks)
        # The scores as they were before this cut, for the ties (the kept-mask changes below).
        sc = _scores(group.score, group.slots[i], slice(a, b), group.pruned[i] > 0) if tied and absval else values
        if fast:
            native.keep(values, cut.threshold, mask, absval)
        else:
            torch.logical_and(mask, values >= cut.threshold, out=mask)
        if tied:
            take = (sc == cut.threshold).nonzero().squeeze(1)[:ties]
            mask[take] = False
            ties -= take.numel()


def prune_groups(groups: list[tuple[list[Slot], int]], score: Score) -> None:
    """Prune exactly k weights in each group. All cuts are found (and inputs checked) before any mask changes."""
    planned = []
    for slots, k in groups:
        group = _Group(slots, score)
        if not 0 <= k <= group.numel:
            raise SmcBenchError(f"cannot prune {k} of {group.numel} weights in {slots[0].name!r}")
        if k < sum(group.pruned):
            names = ", ".join(s.name for s in slots[:3]) + (" ..." if len(slots) > 3 else "")
            raise SmcBenchError(
                f"target prunes {k} weights but {sum(group.pruned)} are already pruned in [{names}]: "
                "masks only grow; ask for a sparsity at or above the current one"
            )
        planned.append((group, find_cut(group, k)))
    for group, cut in planned:
        apply_cut(group, cut)


# --- allocations: which groups, how many per group -----------------------------------------------------------

Allocation = Callable[[list[Slot], float], list[tuple[list[Slot], int]]]
ALLOCATIONS: dict[str, Allocation] = {}


def register_allocation(name: str) -> Callable[[Allocation], Allocation]:
    def add(fn: Allocation) -> Allocation:
        ALLOCATIONS[name] = fn
        return fn

    return add


@register_allocation("global")
def allocate_global(slots: list[Slot], sparsity: float) -> list[tuple[list[Slot], int]]:
    """One threshold over all selected tensors."""
    return [(slots, target_count(sparsity, sum(s.mask.numel() for s in slots)))]


@register_allocation("uniform")
def allocate_uniform(slots: list[Slot], sparsity: float) -> list[tuple[list[Slot], int]]:
    """Every tensor at the same sparsity."""
    return [([s], target_count(sparsity, s.mask.numel())) for s in slots]


def erk_densities(shapes: dict[str, tuple[int, ...]], density: float, power: float = 1.0) -> dict[str, float]:
    """Erdős–Rényi-Kernel densities (Evci et al. 2020): density ∝ sum(shape) / prod(shape), capped at 1.

    Layers whose density would exceed 1 become dense and the rest is re-solved, so the total number of kept
    weights is density · N (up to rounding per layer).
    """
    numel = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: (sum(s) / math.prod(s)) ** power for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        budget = density * sum(numel.values()) - sum(numel[n] for n in dense)
        weighted = sum(raw[n] * numel[n] for n in shapes if n not in dense)
        eps = budget / weighted if weighted else 0.0
        over = [n for n in shapes if n not in dense and eps * raw[n] > 1.0]
        if not over:
            return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}
        dense.add(max(over, key=lambda n: raw[n]))


@register_allocation("erk")
def allocate_erk(slots: list[Slot], sparsity: float) -> list[tuple[list[Slot], int]]:
    densities = erk_densities({s.name: tuple(s.mask.shape) for s in slots}, 1.0 - sparsity)
    return [([s], target_count(1.0 - densities[s.name], s.mask.numel())) for s in slots]


def get_allocation(name: str) -> Allocation:
    if name not in ALLOCATIONS:
        raise SmcBenchError(
            f"unknown allocation {name!r}: choose one of {', '.join(sorted(ALLOCATIONS))} or N:M (e.g. 2:4)"
        )
    return ALLOCATIONS[name]


NM_PATTERN = re.compile(r"^(\d+):(\d+)$")


def prune_n_m(slots: list[Slot], score: Score, n: int, m: int) -> None:
    """N:M semi-structured sparsity: in every M consecutive weights along the last dimension, keep the N best.

    Ties keep the earlier weight. Weights already pruned stay pruned.
    """
    if not 0 < n <= m:
        raise SmcBenchError(f"N:M sparsity needs 0 < N <= M, got {n}:{m}")
    for slot in slots:
        if slot.mask.shape[-1] % m:
            raise SmcBenchError(
                f"{slot.name!r} has last dimension {slot.mask.shape[-1]}, not a multiple of M={m}: "
                "exclude it from the selection or choose another M"
            )
    keeps = []  # all computed (and checked) before any mask changes
    for slot in slots:
        has_pruned = not bool(slot.mask.all())
        sc = _scores(score, slot, slice(0, slot.mask.numel()), has_pruned).view(-1, m)
        if torch.isnan(sc).any():
            raise _nan_error(slot)
        order = torch.sort(sc, dim=1, descending=True, stable=True).indices[:, :n]
        keeps.append(torch.zeros_like(sc, dtype=torch.bool).scatter_(1, order, True))
    for slot, keep in zip(slots, keeps, strict=True):
        slot.mask.view(-1, m).logical_and_(keep)


def lowest_k(scores: Tensor, k: int) -> Tensor:
    """Bool tensor marking exactly the k lowest of `scores` (ties: lower flat index first)."""
    flat = scores.reshape(-1)
    chosen = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
    if k <= 0:
        return chosen.view(scores.shape)
    threshold = flat.kthvalue(k).values
    below = flat < threshold
    chosen |= below
    equal = (flat == threshold).nonzero().squeeze(1)
    chosen[equal[: k - int(below.count_nonzero())]] = True
    return chosen.view(scores.shape)
