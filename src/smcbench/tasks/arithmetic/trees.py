"""The output side of the tree decoders: the vocabulary and the shape of a prefix expression's tree.

Teacher forcing knows every target tree in advance, so its structure (parent, side, depth, children, height) is
computed once per example here. The decoder then runs one batched step per tree depth (goals flow top-down) and one
per tree height (subtree embeddings flow bottom-up), instead of walking every tree node by node in Python.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from smcbench.errors import SmcBenchError
from smcbench.tasks.arithmetic.expressions import OPERATORS

SLOT_PREFIX = "number"


def is_slot(token: str) -> bool:
    return token.startswith(SLOT_PREFIX) and token[len(SLOT_PREFIX):].isdigit()


@dataclass(frozen=True)
class OutputVocab:
    """Operators, then constants the decoder can generate, then the problem's own number slots (copied).

    Output id i < len(ops) is an operator; the rest index the "leaf table": constants first, then numbers."""

    ops: tuple[str, ...]
    constants: tuple[str, ...]

    @classmethod
    def from_equations(cls, equations: Iterable[Sequence[str]]) -> OutputVocab:
        """Operators in a fixed order, constants by decreasing frequency (ties by text): from training data only."""
        counts: Counter[str] = Counter()
        used_ops: set[str] = set()
        for eq in equations:
            for tok in eq:
                if tok in OPERATORS:
                    used_ops.add(tok)
                elif not is_slot(tok):
                    counts[tok] += 1
        ops = tuple(op for op in OPERATORS if op in used_ops) or ("+",)
        constants = tuple(sorted(counts, key=lambda c: (-counts[c], c)))
        return cls(ops, constants)

    @property
    def leaf_start(self) -> int:
        return len(self.ops)

    def encode(self, equation: Sequence[str]) -> list[int] | None:
        """Output ids, or None when the equation uses a constant this vocabulary lacks (it cannot be generated)."""
        ids = []
        for tok in equation:
            if tok in self.ops:
                ids.append(self.ops.index(tok))
            elif is_slot(tok):
                ids.append(len(self.ops) + len(self.constants) + int(tok[len(SLOT_PREFIX):]))
            elif tok in self.constants:
                ids.append(len(self.ops) + self.constants.index(tok))
            else:
                return None
        return ids

    def decode(self, ids: Sequence[int]) -> list[str]:
        out = []
        for i in ids:
            if i < len(self.ops):
                out.append(self.ops[i])
            elif i < len(self.ops) + len(self.constants):
                out.append(self.constants[i - len(self.ops)])
            else:
                out.append(f"{SLOT_PREFIX}{i - len(self.ops) - len(self.constants)}")
        return out

    def to_dict(self) -> dict:
        return {"ops": list(self.ops), "constants": list(self.constants)}


@dataclass(frozen=True)
class TreeShape:
    """Per prefix position: parent position (-1 at the root), whether it is a right child, the left sibling
    position (-1 unless a right child), the children (-1 for leaves), depth and height (0 for leaves)."""

    parent: list[int]
    is_right: list[bool]
    left_sibling: list[int]
    left_child: list[int]
    right_child: list[int]
    depth: list[int]
    height: list[int]


def tree_shape(ids: Sequence[int], num_ops: int) -> TreeShape:
    """The tree of a prefix expression in output ids (ids below `num_ops` are binary operators)."""
    n = len(ids)
    parent, is_right, left_sibling = [-1] * n, [False] * n, [-1] * n
    left_child, right_child, depth = [-1] * n, [-1] * n, [0] * n
    open_ops: list[int] = []  # operators still waiting for a child
    for pos, tok in enumerate(ids):
        if open_ops:
            p = open_ops[-1]
            parent[pos], depth[pos] = p, depth[p] + 1
            if left_child[p] == -1:
                left_child[p] = pos
            else:
                right_child[p], is_right[pos], left_sibling[pos] = pos, True, left_child[p]
                open_ops.pop()
        elif pos > 0:
            raise SmcBenchError(f"prefix expression has tokens after its end: {list(ids)}")
        if tok < num_ops:
            open_ops.append(pos)
    if open_ops or n == 0:
        raise SmcBenchError(f"prefix expression is incomplete: {list(ids)}")
    height = [0] * n
    for pos in reversed(range(n)):  # children come after their parent in prefix order
        if left_child[pos] != -1:
            height[pos] = 1 + max(height[left_child[pos]], height[right_child[pos]])
    return TreeShape(parent, is_right, left_sibling, left_child, right_child, depth, height)
