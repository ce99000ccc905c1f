"""Training a found topology from scratch (Gale et al. 2019 §5; Liu et al. 2019, "Rethinking the Value of Network
Pruning"): take the mask of another method's finished run at the same level (OMP (After) by default, with this
run's selection; run first when missing) and train that topology

- from a fresh, seeded random initialisation (`init: random`), or rewound to θ0, the pretrained weights and the
  head's initial weights (`init: pretrained`): the two separate "the mask" from "the pretrained values";
- for the same number of updates as every run (`scratch_e`), or for the same training FLOPs as the dense run
  (`scratch_b`): more updates for a sparser model, by the ratio of the Linear layers' multiply-adds dense / sparse
  (lookups in embeddings cost none).

The random initialisation: for models that declare `config.initializer_range` (BERT-like), every Linear and
Embedding weight ~ N(0, range²) with zero biases, as their authors initialise them; every other module through
its own `reset_parameters()`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from smcbench.methods.base import Experiment, Method, Outcome, SparseSettings, register_method
from smcbench.methods.paper import retrain
from smcbench.settings import Settings


class ScratchSettings(SparseSettings):
    source: str = Field("omp_after", description="Scratch: the method whose mask (same level, same selection) is "
                        "trained again.")
    init: Literal["random", "pretrained"] = Field("random", description="Scratch: start from a fresh seeded "
                                                   "random initialisation, or from θ0 (the pretrained weights).")
    init_seed: int | None = Field(None, description="Scratch: seed of the random initialisation (default: the "
                                  "run's seed).")

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        from smcbench.methods.base import METHODS

        if value not in METHODS or not METHODS[value].sparse or METHODS[value].sources(cls()):
            usable = ", ".join(n for n, m in METHODS.items() if m.sparse and not isinstance(m, Scratch))
            raise ValueError(f"{value!r} is not a sparse method whose mask can be trained again: choose one of "
                             f"{usable}")
        return value


@torch.no_grad()
def fresh_initialisation(model: nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    std = next((m.config.initializer_range for m in model.modules()
                if hasattr(getattr(m, "config", None), "initializer_range")), None)
    for module in model.modules():
        if std is not None and isinstance(module, nn.Linear | nn.Embedding):
            module.weight.normal_(0.0, std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif hasattr(module, "reset_parameters") and any(True for _ in module.parameters(recurse=False)):
            module.reset_parameters()


def linear_flops_ratio(model: nn.Module, masks: dict[str, torch.Tensor]) -> float:
    """Dense / sparse multiply-adds of the model's Linear layers per token (the masks' kept weights)."""
    names = {id(p): n for n, p in model.named_parameters()}
    dense = sparse = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            n = module.weight.numel()
            name = names.get(id(module.weight))
            dense += n
            sparse += int(masks[name].count_nonzero()) if name in masks else n
    return dense / sparse if sparse else 1.0


class Scratch(Method):
    same_flops: ClassVar[bool] = False

    def sources(self, settings: Settings) -> list[str]:
        return [settings.source]

    def run(self, exp: Experiment, sparsities: list[float]) -> Iterator[Outcome]:
        st = exp.settings
        for s in sparsities:
            masks = exp.source_masks(st.source, s)
            model = exp.initial_model()  # θ0
            if st.init == "random":
                fresh_initialisation(model, exp.seed if st.init_seed is None else st.init_seed)
            sp = st.sparsifier(model)
            sp.set_masks(masks)
            ratio = linear_flops_ratio(model, sp.masks)
            steps = math.ceil(exp.total_steps * ratio) if self.same_flops else None
            out = retrain(exp, model, sp, s, f"{self.name}@{s:.3f}", steps=steps)
            out.notes.update({"source": st.source, "init": st.init, "flops_ratio": round(ratio, 4)})
            yield out


@register_method
class ScratchE(Scratch):
    name = "scratch_e"
    settings = ScratchSettings
    summary = "another run's mask (OMP (After)) trained from a fresh initialisation, same updates"


@register_method
class ScratchB(Scratch):
    name = "scratch_b"
    settings = ScratchSettings
    same_flops = True
    summary = "another run's mask trained from a fresh initialisation, the dense run's training FLOPs"
