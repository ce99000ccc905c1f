"""Exactness of the pruning cut: the engine must prune exactly round(s·N) weights, the lowest scores, with ties
broken by tensor order then flat index, and never revive a pruned weight."""

import math
from contextlib import contextmanager
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smcbench.errors import SmcBenchError
from smcbench.sparsity import allocation as alloc
from smcbench.sparsity import native
from smcbench.sparsity.allocation import Slot, erk_densities, lowest_k, prune_groups, prune_n_m, target_count
from smcbench.sparsity.scores import MagnitudeScore, make_score


@contextmanager
def engine_path(path: str):
    """Force one code path on small tensors: `small` (kthvalue on all scores), `band` (sampled bracket, its pass
    compiled where a C compiler is present), `band-torch` (the same in torch operations) or `bisect` (a zero-width
    bracket with no room: it misses or overflows, and bisection takes over)."""
    if path == "small":
        yield
        return
    bisect = path == "bisect"
    with (
        mock.patch.object(native, "_library", (lambda: None) if path == "band-torch" else native._library),
        mock.patch.object(alloc, "CHUNK", 7),
        mock.patch.object(alloc, "SAMPLE", 64),
        mock.patch.object(alloc, "SMALL_GROUP", 0),
        mock.patch.object(alloc, "_BRACKET_Z", 0.0 if bisect else alloc._BRACKET_Z),
        mock.patch.object(alloc, "_MIN_BAND", 0 if bisect else 64),
    ):
        yield


def reference_pruned(weights, masks, k):
    """What must be pruned: k lowest |w| (pruned first), then tensor order, then flat index."""
    scores, tensor_idx, flat_idx = [], [], []
    for i, (w, m) in enumerate(zip(weights, masks, strict=True)):
        s = w.abs().reshape(-1).double().clone()
        s[~m.reshape(-1)] = -math.inf
        scores.append(s.numpy())
        tensor_idx.append(np.full(s.numel(), i))
        flat_idx.append(np.arange(s.numel()))
    order = np.lexsort((np.concatenate(flat_idx), np.concatenate(tensor_idx), np.concatenate(scores)))
    pruned = np.zeros(len(order), dtype=bool)
    pruned[order[:k]] = True
    return pruned


tensors = st.lists(
    st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=4
)


@settings(max_examples=60, deadline=None)
@given(
    shapes=tensors,
    sparsity=st.floats(0.0, 0.99),
    ties=st.sampled_from(["none", "heavy", "all-equal"]),
    path=st.sampled_from(["small", "band", "band-torch", "bisect"]),
    seed=st.integers(0, 2**16),
)
def test_global_cut_is_exact_and_matches_the_reference(shapes, sparsity, ties, path, seed):
    gen = torch.Generator().manual_seed(seed)
    if ties == "none":
        weights = [torch.randn(s, generator=gen) for s in shapes]
    elif ties == "heavy":
        weights = [torch.randint(-3, 4, s, generator=gen).float() for s in shapes]
    else:
        weights = [torch.full(s, 0.5) for s in shapes]
    masks = [torch.ones(s, dtype=torch.bool) for s in shapes]
    slots = [Slot(f"t{i}", w, m) for i, (w, m) in enumerate(zip(weights, masks, strict=True))]
    k = target_count(sparsity, sum(w.numel() for w in weights))
    with engine_path(path):
        prune_groups([(slots, k)], MagnitudeScore())
    got = ~torch.cat([m.reshape(-1) for m in masks]).numpy()
    assert got.sum() == k
    np.testing.assert_array_equal(got, reference_pruned(weights, [torch.ones_like(m) for m in masks], k))


@settings(max_examples=40, deadline=None)
@given(
    shapes=tensors,
    first=st.floats(0.0, 0.9),
    extra=st.floats(0.0, 0.09),
    path=st.sampled_from(["small", "band", "band-torch", "bisect"]),
    seed=st.integers(0, 2**16),
)
def test_already_pruned_weights_stay_pruned(shapes, first, extra, path, seed):
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(s, generator=gen) for s in shapes]
    masks = [torch.ones(s, dtype=torch.bool) for s in shapes]
    slots = [Slot(f"t{i}", w, m) for i, (w, m) in enumerate(zip(weights, masks, strict=True))]
    n = sum(w.numel() for w in weights)
    with engine_path(path):
        prune_groups([(slots, target_count(first, n))], make_score("random", seed=seed))
        before = [m.clone() for m in masks]
        k = target_count(first + extra, n)
        prune_groups([(slots, k)], MagnitudeScore())  # magnitude would keep some randomly pruned ones
    for b, m in zip(before, masks, strict=True):
        assert not (m & ~b).any()
    assert sum(int((~m).sum()) for m in masks) == k
    got = ~torch.cat([m.reshape(-1) for m in masks]).numpy()
    np.testing.assert_array_equal(got, reference_pruned(weights, before, k))


def test_strict_greater_threshold_would_over_prune_ties_but_the_engine_does_not():
    # Official sparse_core kept `score > threshold`: every weight tied at the threshold was pruned too.
    w = torch.tensor([[0.1, 0.5, 0.5, 0.5], [0.5, 0.5, 0.9, 1.0]])
    threshold = w.reshape(-1).sort().values[3]
    assert int((w <= threshold).sum()) == 6  # the defect: 6 pruned for a target of 4
    mask = torch.ones_like(w, dtype=torch.bool)
    prune_groups([([Slot("w", w, mask)], 4)], MagnitudeScore())
    assert int((~mask).sum()) == 4
    assert mask.tolist() == [[False, False, False, False], [True, True, True, True]]


def test_cut_is_exact_on_a_large_group_with_the_default_path():
    torch.manual_seed(0)
    weights = [torch.randn(1500, 1500), torch.randn(3000, 700)]
    masks = [torch.ones_like(w, dtype=torch.bool) for w in weights]
    n = sum(w.numel() for w in weights)
    assert n > alloc.SMALL_GROUP  # the sampled-bracket path, not kthvalue on everything
    k = target_count(0.488, n)
    prune_groups([([Slot("a", weights[0], masks[0]), Slot("b", weights[1], masks[1])], k)], MagnitudeScore())
    assert sum(int((~m).sum()) for m in masks) == k
    kept_min = min(float(w[m].abs().min()) for w, m in zip(weights, masks, strict=True))
    pruned_max = max(float(w[~m].abs().max()) for w, m in zip(weights, masks, strict=True))
    assert pruned_max <= kept_min


def test_nan_scores_are_an_error_and_change_no_mask():
    w1, w2 = torch.randn(4, 4), torch.randn(4, 4)
    w2[1, 1] = float("nan")
    masks = [torch.ones(4, 4, dtype=torch.bool), torch.ones(4, 4, dtype=torch.bool)]
    for path in ["small", "band", "band-torch"]:
        with engine_path(path), pytest.raises(SmcBenchError, match="NaN in the pruning scores of 'b'"):
            prune_groups([([Slot("a", w1, masks[0])], 8), ([Slot("b", w2, masks[1])], 8)], MagnitudeScore())
        assert all(bool(m.all()) for m in masks)


def test_the_compiled_band_pass_is_built_here_and_agrees_with_torch():
    """This machine has a C compiler: the compiled pass is what runs (elsewhere the torch path, tested above)."""
    scores = torch.tensor([0.5, float("nan"), 0.1, 0.3, 0.3, 0.9, -float("inf")])
    assert native.band_available(scores)
    out = torch.empty(8)
    assert native.band(scores, 0.3, 0.5, out) == (2, 3, 1, True)  # below: 0.1, -inf; inside: 0.5, 0.3, 0.3
    assert out[:3].tolist() == scores[[0, 3, 4]].tolist()
    assert native.band(scores, 0.3, 0.5, out[:2])[3] is False  # no room: reported, counts still complete
    assert native.band(scores, 0.3, 0.5, out[:3]) == (2, 3, 1, True)
    big = torch.rand(300_000, generator=torch.Generator().manual_seed(0))  # split over the threads
    band = torch.empty(300_000)
    below, inside, _, fits = native.band(big, 0.25, 0.26, band)
    assert fits and below == int((big < 0.25).sum())
    assert band[:inside].tolist() == big[(big >= 0.25) & (big <= 0.26)].tolist()  # all of them, in order
    # Whole blocks of 16 (left-packed by AVX2 where the CPU has it), NaN among them; the room exactly what fits.
    x = torch.rand(4096, generator=torch.Generator().manual_seed(1))
    x[::37] = float("nan")
    inside_x = x[(x >= 0.2) & (x <= 0.6)]
    n = inside_x.numel()
    assert native.band(x, 0.2, 0.6, band[:n]) == (int((x < 0.2).sum()), n, 111, True)
    assert band[:n].tolist() == inside_x.tolist()
    assert native.band(x, 0.2, 0.6, band[: n - 1])[3] is False
    # Weights read as they are: the score is |w|, and a weight already pruned (kept False) scores -inf.
    w = torch.tensor([-0.5, 0.1, -0.3, 0.3, float("nan"), -0.9, 0.4])
    kept = torch.tensor([True, True, True, True, True, True, False])
    assert native.band(w, 0.3, 0.5, out, absval=True, kept=kept) == (2, 3, 1, True)  # below: 0.1, the pruned 0.4
    assert out[:3].tolist() == pytest.approx([0.5, 0.3, 0.3])
    mask = kept.clone()
    native.keep(w, 0.4, mask, absval=True)
    assert mask.tolist() == [True, False, False, False, False, True, False]  # NaN and the pruned one stay out


def test_lowering_sparsity_is_an_error():
    w = torch.randn(10)
    mask = torch.ones(10, dtype=torch.bool)
    prune_groups([([Slot("w", w, mask)], 5)], MagnitudeScore())
    with pytest.raises(SmcBenchError, match="masks only grow"):
        prune_groups([([Slot("w", w, mask)], 3)], MagnitudeScore())


@given(sizes=st.lists(st.tuples(st.integers(1, 300), st.integers(1, 300)), min_size=1, max_size=6),
       density=st.floats(0.01, 1.0))
def test_erk_densities_are_capped_and_keep_the_budget(sizes, density):
    shapes = {f"t{i}": s for i, s in enumerate(sizes)}
    d = erk_densities(shapes, density)
    assert all(0.0 <= v <= 1.0 + 1e-9 for v in d.values())
    kept = sum(d[n] * math.prod(s) for n, s in shapes.items())
    assert kept == pytest.approx(density * sum(math.prod(s) for s in shapes.values()), rel=1e-6)


def test_erk_gives_small_layers_higher_density():
    d = erk_densities({"small": (10, 10), "big": (1000, 1000)}, 0.1)
    assert d["small"] > d["big"]


def test_n_m_keeps_exactly_n_of_every_m_with_ties_on_the_earlier_weight():
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0, 4.0, -3.0, 2.0, 0.0]])
    mask = torch.ones_like(w, dtype=torch.bool)
    prune_n_m([Slot("w", w, mask)], MagnitudeScore(), 2, 4)
    assert mask.tolist() == [[True, True, False, False, True, True, False, False]]
    with pytest.raises(SmcBenchError, match="not a multiple of M=3"):
        prune_n_m([Slot("w", w, mask)], MagnitudeScore(), 1, 3)


@given(st.lists(st.integers(-2, 2), min_size=1, max_size=40), st.data())
def test_lowest_k_is_exact_with_ties(values, data):
    k = data.draw(st.integers(0, len(values)))
    chosen = lowest_k(torch.tensor(values, dtype=torch.float32), k)
    order = sorted(range(len(values)), key=lambda i: (values[i], i))[:k]
    assert sorted(chosen.nonzero().squeeze(1).tolist()) == sorted(order)


def test_bisection_fallback_is_taken_and_exact():
    calls = []
    real = alloc._bisect

    def spy(*args):
        calls.append(args[1:])
        return real(*args)

    torch.manual_seed(1)
    w = torch.randn(30, 30)
    mask = torch.ones_like(w, dtype=torch.bool)
    with engine_path("bisect"), mock.patch.object(alloc, "_bisect", spy):
        prune_groups([([Slot("w", w, mask)], 400)], MagnitudeScore())
    assert calls
    assert int((~mask).sum()) == 400
    assert float(w[~mask].abs().max()) <= float(w[mask].abs().min())


def test_the_compiled_pass_is_chosen_by_where_the_weights_are_not_the_band_buffer():
    """Regression: find_cut asked whether its CPU band buffer could take the compiled pass, so weights on a GPU
    would have had their device pointers read by C. Here a weight the compiled pass cannot read (as a GPU one)
    sends the whole cut down the torch path, with the same exact result."""
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(w, dtype=torch.bool)
    cpu_only = native.band_available
    with (engine_path("band"), mock.patch.object(native, "band_available", lambda t: cpu_only(t) and t is not w),
          mock.patch.object(native, "band", side_effect=AssertionError("compiled pass on a non-CPU weight")),
          mock.patch.object(native, "keep", side_effect=AssertionError("compiled pass on a non-CPU weight"))):
        prune_groups([([Slot("w", w, mask)], 1000)], MagnitudeScore())
    expected = reference_pruned([w], [torch.ones_like(mask)], 1000)
    assert (~mask.reshape(-1)).numpy().tolist() == expected.tolist()
