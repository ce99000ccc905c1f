"""Callbacks: how methods enter the training loop. The loop calls every hook at fixed points, in the order the
callbacks declare (`order`, lower first; ties keep list order), and never branches on a method.

One optimizer update: for each micro-batch, forward → `loss` (add terms) → backward; then `on_after_backward`
(gradients of the whole update are complete) → clipping → `lr_factor` (each callback may rescale the schedule's
factor) → optimizer step → `on_step_end`. Validation is wrapped in `on_evaluate_begin` / `on_evaluate_end`.
Steps count optimizer updates, so gradient accumulation never stretches a schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn


@dataclass
class LoopState:
    model: nn.Module
    optimizer: Any
    step: int  # optimizer updates done
    total_steps: int
    # The schedule's factor at any update (for callbacks that restart it, e.g. learning-rate rewinding).
    schedule: Callable[[int], float] = field(default=lambda step: 1.0)


class Callback:
    order: int = 0

    def parameter_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Extra trainable parameters this callback owns (gates, log-variances, ...), as optimizer parameter
        groups ({"params": [...], "lr": ..., "weight_decay": ...}); asked once, before the optimizer is built.
        Their values belong in `state_dict` so that a resumed run gets them back."""
        return []

    def on_train_begin(self, state: LoopState) -> None: ...

    def loss(self, state: LoopState, batch: dict[str, Tensor], outputs: Any, loss: Tensor) -> Tensor:
        """The micro-batch's loss with this callback's terms added (a regulariser, a distillation term).
        `outputs` is what the task's loss function returned (a model output with `.loss`, or the loss)."""
        return loss

    def on_after_backward(self, state: LoopState) -> None: ...

    def lr_factor(self, state: LoopState, factor: float) -> float:
        """The learning-rate factor for update `state.step` (the schedule's, as changed by earlier callbacks)."""
        return factor

    def on_step_end(self, state: LoopState) -> None: ...

    def on_evaluate_begin(self, state: LoopState) -> None: ...

    def on_evaluate_end(self, state: LoopState) -> None: ...

    def selectable(self, state: LoopState) -> bool:
        """May a checkpoint taken now be selected as the final model? (GMP: not before reaching its target.)"""
        return True

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


def in_order(callbacks: list[Callback] | tuple[Callback, ...]) -> list[Callback]:
    return sorted(callbacks, key=lambda cb: cb.order)
