"""Sparsity as training callbacks: the loop calls them at fixed points and never branches on a method.

Order inside one optimizer update: backward (all micro-batches) → `on_after_backward` (RigL reads the dense
gradients here, then the mask enforcer zeroes the pruned ones) → optimizer step → `on_step_end` (GMP prunes here,
after update `state.step`). Steps count optimizer updates, so gradient accumulation never stretches a schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from smcbench.sparsity import GradualSchedule, RigLSchedule, Sparsifier
from smcbench.sparsity.scores import Score


@dataclass
class LoopState:
    model: nn.Module
    optimizer: Any
    step: int  # optimizer updates done
    total_steps: int


class Callback:
    def on_train_begin(self, state: LoopState) -> None: ...

    def on_after_backward(self, state: LoopState) -> None: ...

    def on_step_end(self, state: LoopState) -> None: ...

    def selectable(self, state: LoopState) -> bool:
        """May a checkpoint taken now be selected as the final model? (GMP: not before reaching its target.)"""
        return True

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class MaskEnforcer(Callback):
    """Keeps the masks exact: zero gradients before each step, re-mask after it when the optimizer needs it."""

    def __init__(self, sparsifier: Sparsifier) -> None:
        self.sparsifier = sparsifier

    def on_train_begin(self, state: LoopState) -> None:
        if state.optimizer not in self.sparsifier.optimizers:
            self.sparsifier.attach_optimizer(state.optimizer)
        self.sparsifier.apply()

    def on_after_backward(self, state: LoopState) -> None:
        self.sparsifier.mask_gradients()

    def on_step_end(self, state: LoopState) -> None:
        self.sparsifier.after_step()

    def state_dict(self) -> dict:
        return {"masks": {n: m.clone() for n, m in self.sparsifier.masks.items()}}

    def load_state_dict(self, state: dict) -> None:
        if "masks" in state:
            self.sparsifier.set_masks(state["masks"])


class GradualPruning(Callback):
    """GMP (Zhu & Gupta): prune to the cubic schedule's target after the updates it names."""

    def __init__(self, sparsifier: Sparsifier, schedule: GradualSchedule, score: str | Score = "magnitude",
                 allocation: str = "global") -> None:
        self.sparsifier = sparsifier
        self.schedule = schedule
        self.score = score
        self.allocation = allocation

    def on_step_end(self, state: LoopState) -> None:
        target = self.schedule.target(state.step)
        if target is not None and target > 0:
            self.sparsifier.prune(target, self.score, self.allocation)

    def selectable(self, state: LoopState) -> bool:
        return state.step >= self.schedule.end


class RigLUpdates(Callback):
    """RigL: every `interval` updates until `end`, drop and regrow a cosine-decaying fraction per layer.
    Must come before the MaskEnforcer in the callback list: it needs the dense gradients."""

    def __init__(self, sparsifier: Sparsifier, schedule: RigLSchedule) -> None:
        self.sparsifier = sparsifier
        self.schedule = schedule
        self.updates = 0

    def on_after_backward(self, state: LoopState) -> None:
        # This backward feeds update number state.step + 1.
        fraction = self.schedule.drop_fraction(state.step + 1)
        if fraction:
            self.sparsifier.rigl_step(fraction)
            self.updates += 1

    def state_dict(self) -> dict:
        return {"rigl_updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state.get("rigl_updates", 0))
