"""Prefix equations over masked numbers: evaluation, validity and conversion from infix.

Tokens are operators (+ - * / ^), number slots `number0`, `number1`, ... (the problem's i-th quantity) and literal
constants (`1.0`, `100.0`, `0.01`). A prediction that does not form exactly one tree, uses an unknown token or slot,
divides by zero or overflows is invalid: `evaluate_prefix` returns None, it never raises.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

OPERATORS = ("+", "-", "*", "/", "^")
ANSWER_TOLERANCE = 1e-4
_SLOT = re.compile(r"^number(\d+)$")


def _value(token: str, numbers: Sequence[float]) -> float | None:
    slot = _SLOT.match(token)
    if slot:
        i = int(slot.group(1))
        return float(numbers[i]) if i < len(numbers) else None
    try:
        value = float(token)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _apply(op: str, a: float, b: float) -> float | None:
    try:
        if op == "+":
            out = a + b
        elif op == "-":
            out = a - b
        elif op == "*":
            out = a * b
        elif op == "/":
            if b == 0:
                return None
            out = a / b
        else:
            out = a**b
            if isinstance(out, complex):
                return None
    except (OverflowError, ZeroDivisionError, ValueError):
        return None
    return out if math.isfinite(out) else None


def evaluate_prefix(tokens: Sequence[str], numbers: Sequence[float]) -> float | None:
    """The value of a prefix expression, or None when it is invalid."""
    if not tokens:
        return None
    stack: list[float] = []
    for token in reversed(tokens):  # right to left: operands are on the stack when their operator comes
        if token in OPERATORS:
            if len(stack) < 2:
                return None
            a, b = stack.pop(), stack.pop()
            value = _apply(token, a, b)
        else:
            value = _value(token, numbers)
        if value is None:
            return None
        stack.append(value)
    return stack[0] if len(stack) == 1 else None


def answer_correct(tokens: Sequence[str], numbers: Sequence[float], answer: float,
                   tolerance: float = ANSWER_TOLERANCE) -> bool:
    """Value accuracy: the expression evaluates to the answer within `tolerance` (absolute)."""
    value = evaluate_prefix(tokens, numbers)
    return value is not None and abs(value - answer) < tolerance


_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "^": 3}


def infix_to_prefix(tokens: Sequence[str]) -> list[str]:
    """Space-separated infix (SVAMP.json's `( 76.0 - 25.0 )`) to prefix tokens. Raises ValueError when
    malformed. `^` is right-associative, the others left-associative."""
    output: list[list[str]] = []
    ops: list[str] = []

    def reduce() -> None:
        op = ops.pop()
        if len(output) < 2:
            raise ValueError("operator without two operands")
        right, left = output.pop(), output.pop()
        output.append([op, *left, *right])

    for token in tokens:
        if token == "(":
            ops.append(token)
        elif token == ")":
            while ops and ops[-1] != "(":
                reduce()
            if not ops:
                raise ValueError("unbalanced ')'")
            ops.pop()
        elif token in _PRECEDENCE:
            while ops and ops[-1] != "(" and (
                _PRECEDENCE[ops[-1]] > _PRECEDENCE[token]
                or (_PRECEDENCE[ops[-1]] == _PRECEDENCE[token] and token != "^")
            ):
                reduce()
            ops.append(token)
        else:
            output.append([token])
    while ops:
        if ops[-1] == "(":
            raise ValueError("unbalanced '('")
        reduce()
    if len(output) != 1:
        raise ValueError("not a single expression")
    return output[0]
