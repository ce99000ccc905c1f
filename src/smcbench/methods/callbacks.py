"""Sparsity in the training loop: masks kept exact, GMP's schedule, RigL's updates. Each is a loop callback; their
relative order is declared (`order`): RigL reads the dense gradients before the mask enforcer zeroes the pruned
ones, and GMP prunes before the enforcer re-masks after a step."""

from __future__ import annotations

from collections.abc import Callable

from smcbench.sparsity import GradualSchedule, RigLSchedule, Sparsifier
from smcbench.sparsity.learned import LearnedSparsity
from smcbench.sparsity.scores import Score
from smcbench.training import Callback, LoopState

# Declared order: lower first at every hook.
ORDER_MASK_UPDATES = 0  # GMP, RigL: change masks (RigL reads the dense gradients)
ORDER_MASK_ENFORCER = 100  # last: zero pruned gradients, re-mask after the step


class MaskEnforcer(Callback):
    """Keeps the masks exact: zero gradients before each step, re-mask after it when the optimizer needs it."""

    order = ORDER_MASK_ENFORCER

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
    """GMP (Zhu & Gupta): prune to the cubic schedule's target after the updates it names. `step(sparsifier,
    target)` replaces the pruning step (default: `score` ranked by `allocation`), e.g. oBERT's, which gathers a
    fresh Fisher and updates the kept weights."""

    order = ORDER_MASK_UPDATES

    def __init__(self, sparsifier: Sparsifier, schedule: GradualSchedule, score: str | Score = "magnitude",
                 allocation: str = "global", step: Callable[[Sparsifier, float], None] | None = None) -> None:
        self.sparsifier = sparsifier
        self.schedule = schedule
        self.score = score
        self.allocation = allocation
        self.step = step or (lambda sp, target: sp.prune(target, self.score, self.allocation))

    def on_step_end(self, state: LoopState) -> None:
        target = self.schedule.target(state.step)
        if target is not None and target > 0:
            self.step(self.sparsifier, target)

    def selectable(self, state: LoopState) -> bool:
        return state.step >= self.schedule.end


class RigLUpdates(Callback):
    """RigL: every `interval` updates until `end`, drop and regrow a cosine-decaying fraction per layer. It needs
    the dense gradients, so it runs before the MaskEnforcer (declared by `order`)."""

    order = ORDER_MASK_UPDATES

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


class LearnedSparsityTraining(Callback):
    """A method that learns its sparsity (sparsity.learned): its per-weight parameters join the optimizer (their own
    learning rate, no weight decay), its hooks enter the model, and `weight · ramp(step) · penalty` joins every
    micro-batch's loss, the ramp rising linearly from 0 over the first `warmup_steps` updates. Its parameters are
    part of every checkpoint, so a resumed run continues where it stopped."""

    order = ORDER_MASK_UPDATES

    def __init__(self, learner: LearnedSparsity, weight: float, warmup_steps: int, lr: float) -> None:
        self.learner, self.weight, self.warmup_steps, self.lr = learner, weight, warmup_steps, lr

    def parameter_groups(self, model) -> list[dict]:
        return [{"params": self.learner.parameters(), "lr": self.lr, "weight_decay": 0.0}]

    def on_train_begin(self, state: LoopState) -> None:
        # The loop may have moved the model (a GPU) after the optimizer took these parameters: follow their weights
        # (same Parameter objects, so the optimizer keeps them; its state is created at the first step).
        for name, p in self.learner.extra.items():
            p.data = p.data.to(self.learner.params[name].device)
        self.learner.install()

    def ramp(self, step: int) -> float:
        return min(1.0, step / self.warmup_steps) if self.warmup_steps else 1.0

    def loss(self, state: LoopState, batch: dict, outputs, loss):
        if not self.weight:
            return loss
        return loss + self.weight * self.ramp(state.step) * self.learner.penalty().to(loss.dtype)

    def state_dict(self) -> dict:
        return {"learned": self.learner.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "learned" in state:
            self.learner.load_state_dict(state["learned"])
