import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smcbench.errors import SmcBenchError
from smcbench.sparsity import PAPER_GRID, GradualSchedule, RigLSchedule, cubic_sparsity, imp_levels
from smcbench.sparsity.schedules import imp_round


def test_paper_grid_is_one_minus_point_eight_to_the_k():
    assert [round(s, 3) for s in PAPER_GRID] == [0.2, 0.36, 0.488, 0.59, 0.672, 0.738, 0.79, 0.832, 0.866, 0.893]


@given(st.integers(1, 15))
def test_each_imp_round_removes_twenty_percent_of_the_remaining(k):
    levels = imp_levels(k)
    remaining = [1 - s for s in [0.0, *levels]]
    assert all(math.isclose(b, 0.8 * a) for a, b in zip(remaining, remaining[1:], strict=False))
    assert imp_round(levels[-1]) == k


def test_imp_round_rejects_levels_lth_cannot_reach():
    assert imp_round(0.488) == 3
    with pytest.raises(SmcBenchError, match="not an IMP level"):
        imp_round(0.5)


def test_cubic_takes_zhu_and_gupta_s_values_at_the_quarters():
    # s_t = s_f (1 - (1 - t/T)^3): a quarter of the way 37/64 of the target, half 7/8, three quarters 63/64.
    values = [cubic_sparsity(t, 0.64, 100, 500) for t in (100, 200, 300, 400, 500)]
    assert values == pytest.approx([0.0, 0.64 * 37 / 64, 0.64 * 7 / 8, 0.64 * 63 / 64, 0.64], abs=1e-15)


@given(final=st.floats(0.0, 0.99), start=st.integers(0, 100), length=st.integers(1, 1000), data=st.data())
def test_cubic_is_monotone_and_ends_exactly(final, start, length, data):
    end = start + length
    t = data.draw(st.integers(start, end))
    assert cubic_sparsity(t, final, start, end) <= cubic_sparsity(min(end, t + 1), final, start, end) + 1e-12
    assert cubic_sparsity(start, final, start, end) == 0.0
    assert cubic_sparsity(end, final, start, end) == final


@given(final=st.floats(0.01, 0.99), total=st.integers(10, 5000), interval=st.integers(1, 700))
def test_gmp_reaches_its_target_exactly_at_the_end(final, total, interval):
    # Official GMP stopped pruning one interval early and never reached the target.
    schedule = GradualSchedule.over_training(final, total, interval)
    steps = schedule.steps()
    assert steps[-1] == schedule.end == round(0.8 * total)
    assert schedule.target(schedule.end) == final
    assert steps[0] == schedule.start == round(0.1 * total)
    assert all(b - a <= interval for a, b in zip(steps, steps[1:], strict=False))
    assert schedule.target(schedule.end + 1) is None


def test_rigl_drop_fraction_decays_by_cosine_and_stops_at_the_end():
    rigl = RigLSchedule.over_training(total_steps=1000, interval=100, alpha=0.3)
    assert rigl.end == 750
    assert rigl.drop_fraction(0) is None and rigl.drop_fraction(150) is None
    assert rigl.drop_fraction(100) == pytest.approx(0.15 * (1 + math.cos(math.pi * 100 / 750)))
    assert rigl.drop_fraction(800) is None
    fractions = [rigl.drop_fraction(t) for t in range(100, 750, 100)]
    assert fractions == sorted(fractions, reverse=True)


def test_bad_schedules_are_clear_errors():
    with pytest.raises(SmcBenchError, match="interval >= 1"):
        GradualSchedule(0.5, 0, 10, 0)
    with pytest.raises(SmcBenchError, match="RigL"):
        RigLSchedule(0, 10)
