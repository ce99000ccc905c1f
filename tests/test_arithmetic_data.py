import math
import operator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smcbench.errors import SmcBenchError
from smcbench.tasks.arithmetic.data import mask_numbers, read_problems, unmask_numbers
from smcbench.tasks.arithmetic.expressions import answer_correct, evaluate_prefix, infix_to_prefix

REAL_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "arithmetic"


def test_prefix_evaluation_with_slots_and_constants():
    assert evaluate_prefix("- number0 number1".split(), [8, 2]) == 6
    assert evaluate_prefix("* / number0 100.0 number1".split(), [25, 8]) == 2
    assert answer_correct("+ number0 number2".split(), [139, 118, 131], 270)
    assert not answer_correct("+ number0 number1".split(), [139, 118, 131], 270)


@pytest.mark.parametrize("tokens", [
    "/ number0 0.0", "/ number0 - number1 number1",  # division by zero
    "+ number0", "number0 number1", "+", "",  # not exactly one tree
    "+ number0 number7", "+ number0 apple", "^ 10.0 1000.0", "^ -1.0 0.5",  # bad slot, bad token, overflow, complex
])
def test_invalid_expressions_are_none_not_a_crash(tokens):
    assert evaluate_prefix(tokens.split(), [1.0, 2.0]) is None
    assert not answer_correct(tokens.split(), [1.0, 2.0], 0.0)


OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


@st.composite
def trees(draw, depth=0):
    if depth >= 3 or draw(st.booleans()):
        return draw(st.sampled_from(["number0", "number1", "number2", "2.0", "0.5"]))
    return (draw(st.sampled_from(sorted(OPS))), draw(trees(depth + 1)), draw(trees(depth + 1)))


def prefix(t):
    return [t] if isinstance(t, str) else [t[0], *prefix(t[1]), *prefix(t[2])]


def infix(t):
    return [t] if isinstance(t, str) else ["(", *infix(t[1]), t[0], *infix(t[2]), ")"]


def value(t, numbers):
    if isinstance(t, str):
        return numbers[int(t[6:])] if t.startswith("number") else float(t)
    a, b = value(t[1], numbers), value(t[2], numbers)
    if a is None or b is None or (t[0] == "/" and b == 0):
        return None
    return OPS[t[0]](a, b)


@given(trees(), st.lists(st.integers(-20, 20).map(float), min_size=3, max_size=3))
def test_prefix_evaluation_matches_the_tree_and_infix_converts_back(tree, numbers):
    expected = value(tree, numbers)
    got = evaluate_prefix(prefix(tree), numbers)
    assert (got is None) == (expected is None or not math.isfinite(expected))
    if got is not None:
        assert got == pytest.approx(expected)
    assert infix_to_prefix(infix(tree)) == prefix(tree)


def test_infix_precedence_and_errors():
    assert infix_to_prefix("76.0 - 25.0 * 2.0 - 1.0".split()) == "- - 76.0 * 25.0 2.0 1.0".split()
    assert infix_to_prefix("2.0 ^ 3.0 ^ 2.0".split()) == "^ 2.0 ^ 3.0 2.0".split()
    for bad in ["( 1.0 + 2.0", "1.0 + 2.0 )", "1.0 +", "1.0 2.0"]:
        with pytest.raises(ValueError):
            infix_to_prefix(bad.split())


@pytest.mark.parametrize("text, expected", [
    ("He has 3 apples and 4.5 pears.", [3.0, 4.5]),
    ("Dan had $ 3 left after 12th-grade 1,200 sales", [3.0, 1200.0]),  # ordinals are words, not quantities
    ("No quantities here.", []),
])
def test_number_masking_round_trip(text, expected):
    masked, numbers = mask_numbers(text)
    assert numbers == expected
    assert [f"number{i}" in masked for i in range(len(expected))] == [True] * len(expected)
    assert unmask_numbers(masked, numbers) == text.replace("1,200", "1200")


def test_reader_rejects_malformed_rows(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("Question,Numbers,Equation,Answer\nq number0,1.0,+ number0,2\n")
    with pytest.raises(SmcBenchError, match="train.csv:2: equation '\\+ number0' is not a valid prefix"):
        read_problems(path)
    path.write_text("Question,Numbers,Equation,Answer\nq number0,one,+ number0 1.0,2\n")
    with pytest.raises(SmcBenchError, match="train.csv:2: malformed row"):
        read_problems(path)
    with pytest.raises(SmcBenchError, match="pass --data-dir"):
        read_problems(tmp_path / "missing.csv")


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="real data not present at ../shared/data (read-only, not in repo)")
def test_real_arithmetic_files_load_with_the_documented_sizes():
    fold = read_problems(REAL_DATA / "cv_mawps" / "fold0" / "train.csv")
    assert len(fold) == 1537 and len(read_problems(REAL_DATA / "cv_mawps" / "fold0" / "dev.csv")) == 384
    svamp_train = read_problems(REAL_DATA / "mawps-asdiv-a_svamp" / "train.csv")
    assert len(svamp_train) == 3138 and len(read_problems(REAL_DATA / "mawps-asdiv-a_svamp" / "dev.csv")) == 1000
    # The public files' few answer/equation mismatches are kept and flagged, not dropped.
    assert 0 < sum(not p.consistent for p in svamp_train) < 0.01 * len(svamp_train)
