"""Structured sparsity on tensors: a unit (an attention head, a feed-forward neuron) is a set of slices of named
tensors that are pruned together. Which slices form a unit is the model's business (smcbench.structure); here:
how many units of each kind a level prunes, their scores, and the masks.

Counts are per layer and the same in every layer (so the pruned model is a regular one): `h` heads and `n` neurons
with h = round(level × heads) and n the neurons that bring the layer's pruned weights nearest to level × the
layer's selected weights. The achieved fraction is therefore exact to within half a neuron's weights per layer
(a unit cannot be split), and every layer keeps at least one head and one neuron.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Slice:
    tensor: str
    dim: int  # 0: rows (outputs), 1: columns (inputs)
    start: int
    stop: int


@dataclass(frozen=True)
class Unit:
    kind: str  # "head" or "neuron"
    layer: int
    index: int
    slices: tuple[Slice, ...]

    def numel(self, shapes: dict[str, tuple[int, ...]]) -> int:
        total = 0
        for s in self.slices:
            shape = list(shapes[s.tensor])
            shape[s.dim] = s.stop - s.start
            count = 1
            for d in shape:
                count *= d
            total += count
        return total

    def values(self, params: dict[str, Tensor]) -> Tensor:
        """The unit's weights, flattened and concatenated."""
        return torch.cat([params[s.tensor].narrow(s.dim, s.start, s.stop - s.start).reshape(-1)
                          for s in self.slices])


def counts(level: float, heads: int, head_numel: int, neurons: int, neuron_numel: int) -> tuple[int, int]:
    """(heads, neurons) to prune in a layer so that their weights come nearest to `level` of the layer's."""
    target = level * (heads * head_numel + neurons * neuron_numel)
    h = min(heads - 1, max(0, round(level * heads)))
    n = min(neurons - 1, max(0, round((target - h * head_numel) / neuron_numel)))
    return h, n


def magnitude_scores(units: list[Unit], params: dict[str, Tensor]) -> Tensor:
    """Each unit's L2 norm (its weights as one vector): the structured analogue of magnitude pruning."""
    return torch.stack([u.values(params).detach().float().norm() for u in units])


def structured_masks(units: list[Unit], params: dict[str, Tensor], scores: Tensor, level: float,
                     tensors: list[str]) -> dict[str, Tensor]:
    """Masks of `tensors` (all kept) with, in every layer, the lowest-scoring heads and neurons pruned by
    `counts` (ties: the lower index first, so the masks are deterministic)."""
    masks = {t: torch.ones_like(params[t], dtype=torch.bool) for t in tensors}
    shapes = {t: tuple(params[t].shape) for t in tensors}
    for layer in sorted({u.layer for u in units}):
        mine = [(i, u) for i, u in enumerate(units) if u.layer == layer]
        heads = [(i, u) for i, u in mine if u.kind == "head"]
        neurons = [(i, u) for i, u in mine if u.kind == "neuron"]
        h, n = counts(level, len(heads), heads[0][1].numel(shapes), len(neurons), neurons[0][1].numel(shapes))
        for group, k in ((heads, h), (neurons, n)):
            order = sorted(group, key=lambda iu: (float(scores[iu[0]]), iu[1].index))
            for _, unit in order[:k]:
                for s in unit.slices:
                    masks[s.tensor].narrow(s.dim, s.start, s.stop - s.start).fill_(False)
    return masks


def removed(units: list[Unit], masks: dict[str, Tensor]) -> list[Unit]:
    """The units whose every weight is masked (what a physically smaller model can drop)."""
    return [u for u in units
            if all(s.tensor in masks and not masks[s.tensor].narrow(s.dim, s.start, s.stop - s.start).any()
                   for s in u.slices)]
