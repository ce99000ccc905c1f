"""The sparsity engine: pure torch, knows tensors only (never a task).

Modules: `selection` (which tensors), `scores` (importance), `allocation` (how many where, exact selection),
`schedules` (when), `rigl` (mask updates), `sparsifier` (masks kept exact through training), `report`.
"""

from smcbench.sparsity.allocation import ALLOCATIONS, erk_densities, lowest_k, target_count
from smcbench.sparsity.report import format_table, layer_sparsity, overall_sparsity, weight_sparsity
from smcbench.sparsity.schedules import PAPER_GRID, GradualSchedule, RigLSchedule, cubic_sparsity, imp_levels
from smcbench.sparsity.scores import (
    SCORES,
    Score,
    ScoreContext,
    accumulate_gradients,
    build_score,
    make_score,
    register_score,
)
from smcbench.sparsity.selection import select_prunable
from smcbench.sparsity.sparsifier import Sparsifier, read_masks

__all__ = [
    "ALLOCATIONS",
    "PAPER_GRID",
    "SCORES",
    "GradualSchedule",
    "RigLSchedule",
    "Score",
    "ScoreContext",
    "Sparsifier",
    "accumulate_gradients",
    "build_score",
    "cubic_sparsity",
    "erk_densities",
    "format_table",
    "imp_levels",
    "layer_sparsity",
    "lowest_k",
    "make_score",
    "overall_sparsity",
    "read_masks",
    "register_score",
    "select_prunable",
    "target_count",
    "weight_sparsity",
]
