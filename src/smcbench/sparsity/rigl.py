"""RigL mask updates (Evci et al. 2020): drop the weakest active weights, regrow where the gradient is largest.

Per layer: each layer keeps its own number of active weights. Connections that are new at this update start at
zero with fresh (zero) optimizer state; the caller (`Sparsifier.rigl_step`) resets both.
"""

from __future__ import annotations

import math

from torch import Tensor

from smcbench.sparsity.allocation import lowest_k, target_count


def rigl_masks(weight: Tensor, grad: Tensor, mask: Tensor, fraction: float) -> Tensor:
    """The new mask of one layer after moving round(fraction · active) connections.

    Drop: the active weights of smallest magnitude. Grow: the largest |gradient| among the inactive ones after
    the drop (a just-dropped weight may come back, as in the reference implementation).
    """
    active = int(mask.count_nonzero())
    moved = target_count(fraction, active)
    if moved == 0:
        return mask.clone()
    inactive = mask.numel() - active
    drop_scores = weight.detach().abs().float().masked_fill(~mask, -math.inf)
    kept = ~lowest_k(drop_scores, inactive + moved)
    # Highest |g| first among candidates; active ones can never be chosen.
    grow_scores = (-grad.detach().abs().float()).masked_fill(kept, math.inf)
    grown = lowest_k(grow_scores, moved)
    return kept | grown


def rigl_update(
    weights: dict[str, Tensor], grads: dict[str, Tensor], masks: dict[str, Tensor], fraction: float
) -> dict[str, Tensor]:
    """New masks for every layer; the active count of each layer is unchanged."""
    out = {}
    for name, mask in masks.items():
        grad = grads.get(name)
        out[name] = mask.clone() if grad is None else rigl_masks(weights[name], grad, mask, fraction)
    return out
