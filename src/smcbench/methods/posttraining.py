"""Post-training pruning of the dense fine-tune from calibration activations: Wanda and SparseGPT.

Both are After methods: they prune the cached dense fine-tune, each Linear layer to the same sparsity, with
statistics of the layer's inputs over a few training batches (sparsity.calibration, sparsity.posttraining). Their
usual setting evaluates the pruned model as it is (`retrain: false`, the default here); `retrain: true` gives them
the same full retraining schedule as OMP (After), so both settings sit in one report as variants.
"""

from __future__ import annotations

from abc import abstractmethod
from functools import partial
from itertools import islice
from typing import Literal

from pydantic import Field
from torch import nn

from smcbench.methods.base import Experiment, ForwardShape, register_method
from smcbench.methods.paper import OneShotAfter, OneShotSettings
from smcbench.settings import Settings
from smcbench.sparsity import Sparsifier
from smcbench.sparsity.allocation import Slot, allocate_uniform, prune_groups, prune_n_m
from smcbench.sparsity.calibration import Hessian, SquaredNorms, prune_layerwise
from smcbench.sparsity.posttraining import SPARSEGPT_BLOCK, SPARSEGPT_DAMP, sparsegpt_prune_layer, wanda_prune_layer
from smcbench.sparsity.scores import MagnitudeScore


class CalibrationSettings(Settings):
    calibration_batches: int = Field(16, ge=1, description="Training batches whose activations calibrate the "
                                     "layer-wise pruning (16 of 8 = 128 examples, SparseGPT's and Wanda's count).")
    sequential: bool = Field(True, description="Prune layer groups in execution order, each calibrated on the "
                             "outputs of the layers pruned before it (false: one pass over the dense model).")


class PostTrainingSettings(OneShotSettings, CalibrationSettings):
    # The references prune the Linear layers of the transformer blocks only; under `all` most of a small model's
    # selected weights are embeddings, which have no layer inputs to calibrate on and fall back to magnitude.
    preset: Literal["all", "encoder", "esm"] = Field(
        "encoder", description="Pruned tensors: encoder (default here: the blocks' Linear layers, as the reference "
        "implementations; embeddings and heads dense), all (embeddings and heads too: those fall back to magnitude) "
        "or esm.")
    retrain: bool = Field(False, description="Retrain with the full schedule after pruning (default: no, the "
                          "post-training setting).")


class SparseGPTSettings(PostTrainingSettings):
    sparsegpt_block: int = Field(SPARSEGPT_BLOCK, ge=1, description="SparseGPT: columns per lazy-update block "
                                 "(its adaptive-mask granularity).")
    sparsegpt_damp: float = Field(SPARSEGPT_DAMP, gt=0, description="SparseGPT: dampening, a fraction of the "
                                  "Hessian's mean diagonal.")


class LayerwiseAfter(OneShotAfter):
    """Selected tensors that are not Linear weights (or never run) are pruned by magnitude at the same level, each
    on its own, listed in the run's notes (`magnitude_pruned`) with their share of the selected weights
    (`magnitude_pruned_fraction`, in the report). The default selection is `encoder`, which has none on a
    transformer."""

    statistics = SquaredNorms

    def extra_forwards(self, settings: CalibrationSettings, shape: ForwardShape) -> float:
        # sparsity.calibration.prune_layerwise: one pass to group the layers, then sequentially one pass over the
        # calibration batches to find the layers called once, and one per group; a group of layers called once
        # stops at its last layer, half a pass on average. Not sequential: one pass for every layer at once.
        batches = settings.calibration_batches
        if not settings.sequential:
            return 1 + batches
        return 1 + batches + batches * shape.linear_groups * (0.5 if shape.linear_once else 1.0)

    @abstractmethod
    def prune_layer(self, exp: Experiment, sparsity: float, name: str, weight: nn.Parameter, mask, stats) -> None:
        """Narrow `mask` (and update `weight`, if the method does) for one Linear layer."""

    def prune_dense(self, exp: Experiment, model: nn.Module, sparsity: float) -> tuple[Sparsifier, dict]:
        st = exp.settings
        sp = st.sparsifier(model)
        batches = list(islice(exp.score_batches(), st.calibration_batches))
        rest = prune_layerwise(model, sp.params, sp.masks, partial(self.prune_layer, exp, sparsity),
                               self.statistics, lambda batch: exp.loss(model, batch), batches, st.sequential)
        if rest:  # embeddings, recurrent weights: no layer inputs to calibrate on; magnitude, each at the level
            slots = [Slot(n, sp.params[n], sp.masks[n]) for n in rest]
            if st.nm():
                prune_n_m(slots, MagnitudeScore(), *st.nm())
            else:
                prune_groups(allocate_uniform(slots, sparsity), MagnitudeScore())
        sp.apply()
        total = sum(p.numel() for p in sp.params.values())
        fallback = sum(sp.params[n].numel() for n in rest)
        return sp, {"magnitude_pruned": rest, "magnitude_pruned_fraction": fallback / total if total else 0.0}


@register_method
class Wanda(LayerwiseAfter):
    name = "wanda"
    settings = PostTrainingSettings
    version = 2  # 2: the encoder selection by default (1: all, embeddings by magnitude)
    summary = "|W|·‖X_j‖ per output row, each Linear layer at the level (Sun et al. 2023), on the dense fine-tune"

    def prune_layer(self, exp, sparsity, name, weight, mask, stats) -> None:
        wanda_prune_layer(weight, mask, stats, sparsity, exp.settings.nm())


@register_method
class SparseGPT(LayerwiseAfter):
    name = "sparsegpt"
    settings = SparseGPTSettings
    version = 2  # 2: the encoder selection by default; dead inputs' weights zeroed first, as the reference
    statistics = Hessian
    summary = "layer-wise OBS reconstruction with adaptive masks (Frantar & Alistarh 2023), on the dense fine-tune"

    def prune_layer(self, exp, sparsity, name, weight, mask, stats) -> None:
        st = exp.settings
        sparsegpt_prune_layer(weight, mask, stats, sparsity, st.nm(), st.sparsegpt_block, st.sparsegpt_damp)
