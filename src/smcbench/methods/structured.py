"""Structured pruning under the paper's protocol: whole attention heads and feed-forward neurons removed from the
dense fine-tune (an After method), then retrained with the full schedule with the units kept at zero. What a
structured mask buys on dense hardware is measurable: `smcbench.structure.shrink` removes the units and the model
is physically smaller (the `shrunk` inference backend).

Every encoder layer loses the same number of heads and of neurons (sparsity.structured.counts): the level is
reached over the attention and feed-forward weights (the `esm` selection) to within half a neuron's weights per
layer, and every layer keeps a head and a neuron. Scores: a unit's L2 norm (`magnitude`), or the first-order
Taylor estimate of the loss change from removing it, |Σ w·g| over the unit with g summed over
`structured_batches` training batches (`taylor`, Molchanov et al. 2019).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from smcbench.methods.base import Experiment, Method, Outcome, register_method
from smcbench.methods.paper import retrain
from smcbench.methods.recipe import RecipeSettings
from smcbench.settings import Settings
from smcbench.sparsity import Sparsifier, accumulate_gradients
from smcbench.sparsity.structured import Unit
from smcbench.structure import unit_masks, unit_tensors, units


class StructuredSettings(RecipeSettings):
    retrain: bool = Field(True, description="Retrain with the full schedule after pruning (false: evaluate the "
                          "pruned model as it is, the post-training setting).")
    structured_score: Literal["magnitude", "taylor"] = Field(
        "magnitude", description="Unit score: magnitude (L2 norm of the unit's weights) or taylor (|Σ w·g| over "
        "the unit, gradients summed over structured_batches training batches).")
    structured_batches: int = Field(16, ge=1, description="Training batches the taylor score sums gradients over.")

    def sparsifier(self, model: nn.Module) -> Sparsifier:
        """The tensors a structured mask covers: the attention and feed-forward weights."""
        return Sparsifier(model, "esm")


def unit_sparsifier(model: nn.Module, masks: dict[str, torch.Tensor]) -> Sparsifier:
    """A sparsifier over the attention and feed-forward weights holding whole-unit masks (the unit tensors'
    masks; any other selected tensor kept whole)."""
    sp = Sparsifier(model, "esm")
    sp.set_masks({**{n: torch.ones_like(p, dtype=torch.bool) for n, p in sp.params.items()}, **masks})
    return sp


def taylor_scores(found: list[Unit], params: dict[str, nn.Parameter], grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([(u.values(params).detach().float() * u.values(grads).float()).sum().abs() for u in found])


@register_method
class Structured(Method):
    name = "structured"
    settings = StructuredSettings
    needs_dense = True
    stage = "after"
    summary = "whole heads and neurons (same count per layer) by magnitude or Taylor score, retrain"

    def stage_for(self, settings: Settings) -> str:
        return "after" if settings.retrain else "post-training"

    def trainings(self, settings: Settings) -> float:
        return 1.0 if settings.retrain else 0.0

    def masks(self, exp: Experiment, model: nn.Module, level: float) -> dict[str, torch.Tensor]:
        scores = None  # magnitude
        if exp.settings.structured_score == "taylor":
            found = units(model)
            params = dict(model.named_parameters())
            grads = accumulate_gradients({t: params[t] for t in unit_tensors(found)}, lambda b: exp.loss(model, b),
                                         exp.score_batches(), exp.settings.structured_batches)
            scores = taylor_scores(found, params, grads)
        return unit_masks(model, level, scores)

    def run(self, exp: Experiment, sparsities: list[float]) -> Iterator[Outcome]:
        for s in sparsities:
            model = exp.dense_model()
            sp = unit_sparsifier(model, self.masks(exp, model, s))
            notes = {"achieved_in_selection": sp.sparsity()}
            if exp.settings.retrain:
                out = retrain(exp, model, sp, s, f"structured@{s:.3f}")
            else:
                out = Outcome(s, model, sp, exp.untrained(model), {"retrained": False})
            out.notes.update(notes)
            yield out
