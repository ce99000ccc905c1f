"""Readers for the arithmetic word-problem files in their public formats (the SVAMP repository's CSVs)."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from smcbench.errors import SmcBenchError
from smcbench.tasks.arithmetic.expressions import evaluate_prefix

_NUMBER = re.compile(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?(?!\w)")


@dataclass(frozen=True)
class Problem:
    uid: str
    question: str  # numbers masked as number0, number1, ...
    numbers: tuple[float, ...]
    equation: tuple[str, ...]  # prefix, over number slots and constants
    answer: float
    consistent: bool  # the equation gives the answer (a few public MAWPS rows do not: kept, as in the benchmark)
    groups: tuple[int, ...] = ()  # word positions of the quantity cells (`group_nums`), for Graph2Tree


def read_problems(path: Path) -> list[Problem]:
    """Rows with `Question` (masked), `Numbers` (space separated), `Equation` (prefix) and `Answer`. An equation
    that is not a valid prefix expression is an error; one that is valid but misses its answer is kept and
    flagged (`consistent`), since the benchmark's files contain a few and its scores include them."""
    if not path.is_file():
        raise SmcBenchError(f"data file not found at {str(path)!r}: pass --data-dir pointing at the folder that holds "
                            "arithmetic/ (the public formats; see the data README)")
    out = []
    with path.open(newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.DictReader(f), 2):
            try:
                numbers = tuple(float(x) for x in row["Numbers"].split())
                equation = tuple(row["Equation"].split())
                answer = float(row["Answer"])
                question = row["Question"].strip()
                groups = tuple(int(g) for g in json.loads(row["group_nums"])) if row.get("group_nums") else ()
            except (KeyError, ValueError, AttributeError, TypeError) as err:
                raise SmcBenchError(
                    f"{path}:{number}: malformed row ({type(err).__name__}: {err}); expected Question, Numbers, "
                    "Equation (prefix) and Answer"
                ) from err
            value = evaluate_prefix(equation, numbers)
            if value is None:
                raise SmcBenchError(f"{path}:{number}: equation {' '.join(equation)!r} is not a valid prefix "
                                    f"expression over {len(numbers)} numbers")
            consistent = abs(value - answer) <= 1e-3 * max(1.0, abs(answer))
            out.append(Problem(f"{path.parent.name}/{path.stem}:{number}", question, numbers, equation, answer,
                               consistent, groups))
    return out


def mask_numbers(text: str) -> tuple[str, list[float]]:
    """Replace each quantity in raw text by number0, number1, ... (in order); return the masked text and values."""
    numbers: list[float] = []

    def slot(match: re.Match) -> str:
        numbers.append(float(match.group(0).replace(",", "")))
        return f"number{len(numbers) - 1}"

    return _NUMBER.sub(slot, text), numbers


def unmask_numbers(text: str, numbers: list[float]) -> str:
    """Put the values back (integers without a trailing .0)."""
    def value(match: re.Match) -> str:
        v = numbers[int(match.group(1))]
        return str(int(v)) if v == int(v) else repr(v)

    return re.sub(r"number(\d+)", value, text)
