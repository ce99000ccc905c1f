"""The paired verdicts: exact where they are exact (differences, counts, Holm), and by simulation where they are
statistical: a method that in truth equals dense is declared failing anywhere in a 10-level ladder at most 5 % of
the time, and a real 5-point drop on 1,000 examples (a fifth of the pairs discordant) is found at least 80 % of the
time. The simulations are seeded: their figures are the same at every run."""

import numpy as np
import pytest

from smcbench.metrics import Metric
from smcbench.outcomes import Group, Outcomes, binary
from smcbench.report.significance import compare, holm, ladder

ACCURACY = Metric("accuracy", tolerance=0.01)


def pair(dense_correct, sparse_correct):
    ids = [f"q{i}" for i in range(len(dense_correct))]
    return binary(ids, dense_correct), binary(ids, sparse_correct)


def simulated_pair(rng, n, only_dense, only_sparse):
    """Paired outcomes with the given expected fractions of examples only dense / only sparse gets right."""
    cells = rng.multinomial(1, [0.5, only_dense, only_sparse, 0.5 - only_dense - only_sparse], size=n).argmax(1)
    dense = np.isin(cells, (0, 1))
    sparse = np.isin(cells, (0, 2))
    return pair(dense.tolist(), sparse.tolist())


def test_holm_adjusts_in_steps_and_keeps_the_order():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5]


def test_the_difference_counts_and_pairing_are_exact():
    dense = [1, 1, 1, 0, 0, 1, 0, 1, 1, 0]
    sparse = [1, 0, 0, 0, 1, 1, 0, 0, 1, 0]  # loses q1, q2, q7; gains q4
    d, s = pair(dense, sparse)
    # The sparse run lists its examples in another order: pairing goes by id, not position.
    order = list(reversed(range(10)))
    s = Outcomes("binary", {"": Group([s.groups[""].ids[i] for i in order], [s.groups[""].values[i] for i in order])})
    level = compare([(d, s)], ACCURACY, 0.5, resamples=2000)
    assert level.delta == pytest.approx(-0.2, abs=1e-15)
    assert (level.lost, level.gained, level.examples, level.seeds) == (3, 1, 10, 1)
    assert level.low <= level.delta <= level.high


def test_a_lower_is_better_metric_fails_when_it_rises():
    metric = Metric("error", higher_is_better=False, tolerance=0.01)
    rng = np.random.default_rng(1)
    d, s = simulated_pair(rng, 1000, 0.05, 0.15)  # sparse right on more: its "error" indicator rises
    level = compare([(d, s)], metric, 0.5)
    assert level.delta > 0.05 and level.p < 0.001


def simulated_ladder(rng, n, truths, trial):
    """One method's ten levels against dense: `truths` gives each level's (only dense right, only sparse right)."""
    levels = [compare([simulated_pair(rng, n, *truth)], ACCURACY, s, resamples=2000, seed=trial * 10 + j)
              for j, (s, truth) in enumerate(zip(np.linspace(0.2, 0.893, 10), truths, strict=True))]
    return ladder(levels, ACCURACY)


def test_false_failures_across_a_ten_level_ladder_stay_under_five_percent():
    """Truth: every level equals dense, disagreeing with it on a fifth of 600 questions."""
    rng = np.random.default_rng(2026)
    ladders = 300
    failed = sum(simulated_ladder(rng, 600, [(0.1, 0.1)] * 10, k).failing is not None for k in range(ladders))
    assert failed / ladders <= 0.05, failed  # measured: 11 of 300 (3.7 %)


def test_a_five_point_drop_on_a_thousand_examples_is_found():
    """Truth: nine levels equal dense, the last one loses 5 points; a fifth of the pairs are discordant."""
    rng = np.random.default_rng(7)
    trials = 400
    truths = [(0.1, 0.1)] * 9 + [(0.125, 0.075)]
    found = sum(simulated_ladder(rng, 1000, truths, k).levels[-1].verdict == "fails" for k in range(trials))
    assert found / trials >= 0.8, found  # measured: 340 of 400 (85 %)


def test_verdicts_hold_fail_or_say_the_test_set_cannot_tell():
    rng = np.random.default_rng(3)
    same_small = compare([simulated_pair(rng, 300, 0.1, 0.1)], ACCURACY, 0.2)  # wide interval
    same_large = compare([simulated_pair(rng, 200_000, 0.001, 0.001)], ACCURACY, 0.36)  # narrow, near 0
    drop = compare([simulated_pair(rng, 2000, 0.2, 0.05)], ACCURACY, 0.488)
    result = ladder([same_small, same_large, drop], ACCURACY)
    assert [x.verdict for x in result.levels] == ["inconclusive", "holds", "fails"]
    assert result.failing.sparsity == 0.488 and result.failing.high < 0
    # The resolution: the drop the least precise level could detect, (z_{1-α/3} + z_0.8) × its standard error.
    assert result.resolution == pytest.approx(max(x.mde for x in result.levels))
    assert result.levels[0].mde == pytest.approx((2.1280 + 0.8416) * result.levels[0].se, rel=1e-3)


def test_several_seeds_are_paired_with_their_own_dense_run():
    rng = np.random.default_rng(4)
    pairs = [simulated_pair(rng, 500, 0.1, 0.1) for _ in range(3)]
    level = compare(pairs, ACCURACY, 0.5, resamples=4000)
    per_seed = [np.mean(s.groups[""].values) - np.mean(d.groups[""].values) for d, s in pairs]
    assert level.delta == pytest.approx(np.mean(per_seed), abs=1e-12) and level.seeds == 3
    # Seeds add their spread: the two-level interval is at least as wide as one seed's alone.
    one = compare(pairs[:1], ACCURACY, 0.5, resamples=4000)
    assert (level.high - level.low) >= 0.5 * (one.high - one.low)


def test_bleu_is_resampled_through_sacrebleus_statistics_and_agrees_with_its_paired_test():
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    from smcbench.tasks.translation.bleu import corpus_score, sentence_statistics

    rng = np.random.default_rng(5)
    words = "the a cat dog sat on mat ran fast slow big small red green house tree".split()
    refs = [" ".join(rng.choice(words, size=8)) for _ in range(200)]

    def system(noise):
        out = []
        for r in refs:
            tokens = r.split()
            out.append(" ".join(t if rng.random() > noise else rng.choice(words) for t in tokens))
        return out

    base, other = system(0.2), system(0.3)
    stats = {name: sentence_statistics(h, refs, "en") for name, h in (("base", base), ("other", other))}
    d = Outcomes("bleu", {"en": Group([str(i) for i in range(200)], stats["base"])}, {"smooth_method": "exp"})
    s = Outcomes("bleu", {"en": Group([str(i) for i in range(200)], stats["other"])}, {"smooth_method": "exp"})
    level = compare([(d, s)], Metric("bleu", tolerance=1.0), 0.5)
    exact = corpus_score(other, refs, "en").bleu - corpus_score(base, refs, "en").bleu
    assert level.delta == pytest.approx(exact, abs=1e-9)  # the summed statistics give sacreBLEU's corpus BLEU
    # sacreBLEU's own paired bootstrap (two-sided p) against ours (one-sided, the same distribution).
    test = PairedTest([("base", base), ("other", other)], {"BLEU": BLEU()}, [refs], test_type="bs",
                      n_samples=1000)
    _, scores = test()
    theirs = scores["BLEU"][1].p_value
    assert abs(2 * level.p - theirs) < 0.03, (level.p, theirs)


def test_the_other_tail_mirrors_the_first_when_the_roles_swap():
    rng = np.random.default_rng(11)
    d, s = simulated_pair(rng, 800, 0.08, 0.14)  # sparse right on more: it is better
    forward = compare([(d, s)], ACCURACY, 0.5, resamples=4000, seed=1)
    backward = compare([(s, d)], ACCURACY, 0.5, resamples=4000, seed=1)
    assert forward.p_better < 0.01 < 0.99 < forward.p
    assert backward.p < 0.01 and backward.delta == pytest.approx(-forward.delta, abs=1e-15)
    assert backward.p == pytest.approx(forward.p_better, abs=0.01)  # the same tail, seen from the other side
