"""SMC-Bench's Appendix C recipe (after oBERT, Kurtic et al. 2022) as settings every sparse method takes:

- `lrr`: learning-rate rewinding. Training is cut at the method's pruning steps (GMP's and gradual oBERT's
  schedule); each segment replays the configured learning-rate schedule (warmup, decay) compressed into it, so the
  rate jumps back up after every pruning step and decays until the next one (oBERT's cyclic linear schedule). A
  method that prunes only before its training (OMP/Random (After) retraining, LTH rounds, the Before methods) has
  one segment: its schedule already starts afresh, and `lrr` changes nothing.
- `kd`: knowledge distillation from the dense fine-tune of the same configuration (the cached one: never trained
  twice). The loss becomes (1 − h)·task + h·T²·KL(softmax(teacher/T) ‖ softmax(student/T)) with hardness h and
  temperature T (oBERT's GLUE recipes: h = 1, T = 2). Needs a task whose model output carries `.logits`; for token
  outputs (seq2seq) positions whose label is −100 are left out.
- Embeddings and heads dense: the `encoder` preset (SelectionSettings).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from smcbench.errors import SmcBenchError
from smcbench.settings import Settings
from smcbench.training import Callback, LoopState


class RecipeSettings(Settings):
    lrr: bool = Field(False, description="Learning-rate rewinding: the schedule restarts after every pruning step "
                      "during training (Appendix C recipe).")
    kd: bool = Field(False, description="Distil from the dense fine-tune of the same configuration (Appendix C "
                     "recipe).")
    kd_temperature: float = Field(2.0, gt=0, description="Distillation temperature T.")
    kd_hardness: float = Field(1.0, ge=0, le=1, description="Distillation weight h: (1 − h)·task loss + h·T²·KL.")

    def uses_dense(self) -> bool:
        return self.kd  # the teacher is the dense fine-tune


class LRRewinding(Callback):
    """Replays the schedule in every segment between pruning steps (`pruning_steps`: updates after which the
    method prunes)."""

    def __init__(self, pruning_steps: Sequence[int]) -> None:
        self.pruning_steps = sorted(set(pruning_steps))

    def segment(self, step: int, total: int) -> tuple[int, int]:
        """The [start, end) updates of the segment holding update `step` (0-based)."""
        i = bisect.bisect_right(self.pruning_steps, step)
        start = self.pruning_steps[i - 1] if i else 0
        end = self.pruning_steps[i] if i < len(self.pruning_steps) else total
        return start, max(end, start + 1)

    def lr_factor(self, state: LoopState, factor: float) -> float:
        start, end = self.segment(state.step, state.total_steps)
        if start == 0 and end >= state.total_steps:
            return factor
        # The same fraction of the way through the full schedule as through this segment.
        return state.schedule(int((state.step - start) * state.total_steps / (end - start)))


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float, labels: Tensor | None = None) -> Tensor:
    """T²·KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over examples (or over labelled tokens)."""
    log_p = torch.log_softmax(student.float() / temperature, dim=-1)
    log_q = torch.log_softmax(teacher.float() / temperature, dim=-1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)
    if labels is not None and kl.dim() == labels.dim() and kl.shape == labels.shape:
        keep = labels != -100
        kl = kl[keep]
    return kl.mean() * temperature**2


class Distillation(Callback):
    """Adds the distillation term to every micro-batch's loss; the teacher runs in eval mode without gradients."""

    def __init__(self, teacher: nn.Module, outputs: Callable[[nn.Module, dict], Any], temperature: float,
                 hardness: float) -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.outputs, self.temperature, self.hardness = outputs, temperature, hardness

    def on_train_begin(self, state: LoopState) -> None:
        self.teacher.to(next(state.model.parameters()).device)  # where the loop put the student

    def loss(self, state: LoopState, batch: dict[str, Tensor], outputs: Any, loss: Tensor) -> Tensor:
        student = getattr(outputs, "logits", None)
        if student is None:
            raise SmcBenchError("kd: this task's model returns no logits to distil; run it without kd")
        with torch.no_grad():
            teacher = self.outputs(self.teacher, batch).logits
        kd = distillation_loss(student, teacher, self.temperature, batch.get("labels"))
        return (1.0 - self.hardness) * loss + self.hardness * kd


def recipe_callbacks(settings: Any, teacher: Callable[[], nn.Module], outputs: Callable[[nn.Module, dict], Any],
                     pruning_steps: Sequence[int] = ()) -> list[Callback]:
    """The recipe's callbacks for a method's settings (none when it sets no recipe field)."""
    callbacks: list[Callback] = []
    if getattr(settings, "lrr", False) and pruning_steps:
        callbacks.append(LRRewinding(pruning_steps))
    if getattr(settings, "kd", False):
        callbacks.append(Distillation(teacher(), outputs, settings.kd_temperature, settings.kd_hardness))
    return callbacks
