"""Methods that learn their own sparsity (Gale, Elsen & Hooker 2019, "The State of Sparsity"): sparse variational
dropout and L0 regularisation, on every task family through the engine (sparsity.learned) and one callback
(LearnedSparsityTraining); nothing in the loop knows them.

Both fine-tune from θ0 for the full schedule while learning which weights matter. They reach a sparsity of their
own, set by their penalty weight (Gale et al. place them by sweeping it: list the method several times with other
weights in a grid spec). The benchmark compares methods at fixed levels, so when the learned phase ends every run
ranks the weights by the method's own score (−log α; the gate's open probability), prunes to exactly the requested
level, and fine-tunes the rest with that mask fixed for `finish_fraction` of the schedule's updates. The learned
phase does not depend on the level, so one call trains it once for every pending level (`shares_levels`; a grid
makes one node of them), then ranks and finishes each. The result records the sparsity the method reached by
itself (`notes.reached_sparsity`) beside the exact one. Selected weights
of other layers (recurrent, convolution: the hooks cannot reach the weight those use) are pruned by magnitude at the
level, each on its own, and listed in the notes (`magnitude_pruned`).
"""

from __future__ import annotations

import copy
import math
from abc import abstractmethod
from collections.abc import Iterator
from typing import ClassVar

from pydantic import Field, model_validator
from torch import Tensor, nn

from smcbench.methods.base import Experiment, Method, Outcome, SparseSettings, register_method
from smcbench.methods.callbacks import LearnedSparsityTraining
from smcbench.methods.paper import retrain
from smcbench.methods.recipe import recipe_callbacks
from smcbench.sparsity import Sparsifier
from smcbench.sparsity.allocation import Slot, allocate_uniform, prune_groups, target_count
from smcbench.sparsity.learned import VD_THRESHOLD, L0Gates, LearnedSparsity, VariationalDropout, owners
from smcbench.sparsity.scores import Index, MagnitudeScore, Score


class LearnedSettings(SparseSettings):
    penalty_lr: float = Field(1e-2, gt=0, description="Learned sparsity: learning rate of the per-weight "
                              "parameters (log σ², gate log α), which start far from where they end.")
    penalty_warmup: float = Field(0.1, ge=0, le=1, description="Learned sparsity: fraction of training over which "
                                  "the penalty's weight rises linearly from 0.")
    finish_fraction: float = Field(0.1, gt=0, le=1, description="Learned sparsity: after ranking to the exact "
                                   "level, fine-tune with the mask fixed for this fraction of the schedule.")

    @model_validator(mode="after")
    def _no_rewinding(self) -> LearnedSettings:
        # The learned phase has no pruning steps to rewind after and the finish is one short segment: lrr would be
        # accepted and do nothing. (kd is applied, in both phases.)
        if self.lrr:
            raise ValueError("lrr: learned sparsity prunes at no step during training, so there is nothing to rewind; "
                             "leave it off")
        return self


class VDSettings(LearnedSettings):
    vd_kl_weight: float = Field(1.0, ge=0, description="Variational dropout: weight of the KL term (mean per "
                                "weight); larger, sparser.")
    vd_threshold: float = Field(VD_THRESHOLD, description="Variational dropout: log α above which a weight is "
                                "dropped at evaluation.")


class L0Settings(LearnedSettings):
    l0_lambda: float = Field(1.0, ge=0, description="L0: weight of the expected fraction of open gates; larger, "
                             "sparser (0: dense).")
    l0_initial_keep: float = Field(0.9, gt=0, lt=1, description="L0: initial open probability of every gate.")


class _Fixed(Score):
    def __init__(self, scores: dict[str, Tensor]) -> None:
        self.scores = scores

    def flat(self, name: str, weight: Tensor, index: Index) -> Tensor:
        return self.scores[name].reshape(-1)[index].float()


def prune_exactly(sp: Sparsifier, sparsity: float, scores: dict[str, Tensor], others: list[str]) -> None:
    """Exactly round(s·N) pruned over the selection: the tensors the method could not learn on (recurrent
    weights) by magnitude, each at the level; the learned ones ranked together by the method's scores for the
    rest of the count."""
    slots = {n: Slot(n, p, sp.masks[n]) for n, p in sp.params.items()}
    if others:
        prune_groups(allocate_uniform([slots[n] for n in others], sparsity), MagnitudeScore())
    pruned = sum(int((~sp.masks[n]).sum()) for n in others)
    total = target_count(sparsity, sum(p.numel() for p in sp.params.values()))
    learned = [slots[n] for n in sp.params if n not in others]
    prune_groups([(learned, max(0, total - pruned))], _Fixed(scores))
    sp.apply()


class LearnedSparsityMethod(Method):
    penalty_field: ClassVar[str]

    @abstractmethod
    def learner(self, exp: Experiment, model: nn.Module, params: dict[str, nn.Parameter]) -> LearnedSparsity:
        """The engine object that learns the sparsity of `params`."""

    shares_levels = True  # the learned phase does not depend on the level: trained once for all of them
    stage = "during"

    def run(self, exp: Experiment, sparsities: list[float]) -> Iterator[Outcome]:
        st = exp.settings
        model = exp.initial_model()
        sp = st.sparsifier(model)
        supported, others = owners(model, sp.params)
        learner = self.learner(exp, model, {n: sp.params[n] for n in supported})
        callback = LearnedSparsityTraining(learner, getattr(st, self.penalty_field),
                                           math.floor(st.penalty_warmup * exp.total_steps), st.penalty_lr)
        # The recipe's distillation (kd) applies to the learned phase as to the finish (retrain adds it there).
        recipe = recipe_callbacks(st, exp.dense_model, exp.outputs)
        learned = exp.fine_tune(model, [callback, *recipe], f"{self.name} learned phase")
        reached = learner.reached_sparsity()
        scores = learner.scores()
        learner.fold()
        learner.remove()
        learned_model = model
        finish = max(1, math.floor(st.finish_fraction * exp.total_steps))
        for s in sparsities:  # each level: rank to exactly s from the same learned model, then the fixed-mask finish
            model = copy.deepcopy(learned_model)
            sp = st.sparsifier(model)
            prune_exactly(sp, s, scores, others)
            out = retrain(exp, model, sp, s, f"{self.name}@{s:.3f} fixed mask", steps=finish)
            out.notes.update({"reached_sparsity": round(reached, 6), "learned_steps": learned.steps,
                              "learned_validation": learned.best_metric, "fixed_mask_steps": out.train.steps,
                              "learned_s": round(learned.seconds, 3), "learned_levels": len(sparsities)})
            if others:
                out.notes["magnitude_pruned"] = others
                out.notes["magnitude_pruned_fraction"] = (sum(sp.params[n].numel() for n in others)
                                                          / sum(p.numel() for p in sp.params.values()))
            yield out


@register_method
class SparseVD(LearnedSparsityMethod):
    name = "variational_dropout"
    settings = VDSettings
    # 2: kd applies to the learned phase too (1: only to the fixed-mask finish); lrr refused. 3: the KL penalty's
    # gradient computed fused (sums in another order: last-bit differences), σ looked up before exp on embeddings.
    version = 3
    penalty_field = "vd_kl_weight"
    summary = "sparse variational dropout (Molchanov et al.) from θ0, ranked by log α, short fixed-mask finish"

    def learner(self, exp: Experiment, model: nn.Module, params: dict[str, nn.Parameter]) -> LearnedSparsity:
        return VariationalDropout(model, params, exp.settings.vd_threshold)


@register_method
class L0(LearnedSparsityMethod):
    name = "l0"
    settings = L0Settings
    # 2: kd applies to the learned phase too (1: only to the fixed-mask finish); lrr refused. 3: an embedding's
    # gates sampled for the rows a batch looks up only (the same distribution, other random draws), each layer's
    # forward run once (with θ ⊙ z) instead of twice.
    version = 3
    penalty_field = "l0_lambda"
    summary = "L0 hard-concrete gates (Louizos et al.) from θ0, ranked by gate probability, short fixed-mask finish"

    def learner(self, exp: Experiment, model: nn.Module, params: dict[str, nn.Parameter]) -> LearnedSparsity:
        return L0Gates(model, params, exp.settings.l0_initial_keep)
