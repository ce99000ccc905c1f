"""The training loop shared by every task and method.

AdamW (fused where available), a learning-rate schedule from the registry (training.schedules), gradient
accumulation, gradient clipping, evaluation every N updates on a validation split with model selection, checkpoint
and resume, seeds, dynamic padding with length bucketing. fp32 on CPU, bf16 autocast on GPU; `accelerate` spreads a
run over several GPUs when present. Methods enter through callbacks (training.callbacks), never as branches here.
An output projection of odd width is computed through its padded weight (training.heads: the same logits and
gradients, checked on a probe; MKL's product at an odd width runs at half speed).
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import nn
from torch.profiler import record_function
from tqdm.auto import tqdm

from smcbench.errors import SmcBenchError
from smcbench.settings import Settings
from smcbench.training.allocator import keep_freed_memory
from smcbench.training.callbacks import Callback, LoopState, in_order
from smcbench.training.checkpoint import (
    load_checkpoint,
    load_model_tensors,
    load_optimizer_state,
    model_tensors,
    optimizer_state,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from smcbench.training.dropout import DROPOUT_RNGS, dropout_mode
from smcbench.training.heads import padded_head
from smcbench.training.schedules import SCHEDULES, get_schedule, linear_schedule

__all__ = ["TrainConfig", "TrainResult", "epoch_batches", "linear_schedule", "lr_factor", "make_optimizer", "train"]

Batch = dict[str, torch.Tensor]


def _parse_lr_groups(items: list[str]) -> tuple[tuple[str, float], ...]:
    """CLI form: REGEX=LR, repeatable."""
    out = []
    for item in items:
        pattern, _, value = item.rpartition("=")
        try:
            out.append((pattern, float(value)))
        except ValueError:
            pattern = ""
        if not pattern:
            raise SmcBenchError(f"--lr-group {item!r}: give REGEX=LR, e.g. '^embedder\\.=8e-6'")
    return tuple(out)


class TrainConfig(Settings):
    """Training settings. A field left out takes the task's default (e.g. GTS: lr 1e-3, StepLR), then this one."""

    INTERNAL: ClassVar[frozenset[str]] = frozenset({"seed"})  # follows the run's seed
    CLI_FORMS: ClassVar = {"lr_groups": (list[str], _parse_lr_groups)}
    CLI_FLAGS: ClassVar = {"lr_groups": "--lr-group"}

    lr: float = Field(5e-5, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (never on biases and norms).")
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="Warmup fraction of the updates (one_cycle: the "
                                "rising phase).")
    warmup_steps: int | None = Field(None, ge=0, description="Warmup updates; overrides warmup_ratio.")
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer update.")
    epochs: float = Field(1.0, gt=0, description="Training epochs (ignored with max_steps).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer updates; overrides epochs.")
    eval_every: int | None = Field(None, ge=1, description="Validate every N updates.")
    eval_epochs: float | None = Field(None, gt=0, description="Validate every E epochs (when eval_every is not "
                                      "set); neither: once, at the end.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm (null: none).")
    seed: int = 0
    bucket_by_length: bool = Field(True, description="Batch examples of similar length together (less padding).")
    # (regex searched in parameter names, lr); first match wins, else `lr`. E.g. a pretrained embedder fine-tuned
    # slowly under a decoder trained from scratch.
    lr_groups: tuple[tuple[str, float], ...] = Field((), description="REGEX=LR: learning rate of the parameters "
                                                     "whose names match (repeatable), e.g. '^embedder\\.=8e-6'.")
    schedule: str = Field("linear", description="Learning-rate schedule: " + ", ".join(SCHEDULES) + ".")
    step_epochs: float = Field(20.0, gt=0, description="step schedule: epochs between decays.")
    step_gamma: float = Field(0.5, gt=0, le=1, description="step schedule: decay factor.")
    cycle_div_factor: float = Field(25.0, gt=0, description="one_cycle: initial lr = lr / this.")
    cycle_final_div: float = Field(1e4, gt=0, description="one_cycle: final lr = initial lr / this.")
    dropout_rng: str = Field("torch", description="Dropout's random stream: torch (its own masks) or pcg64 (CPU "
                             "only: numpy's PCG64, ~6x faster to draw; different masks, so different results).")

    @field_validator("lr_groups", mode="before")
    @classmethod
    def _lr_groups(cls, value: Any) -> Any:
        groups = value.items() if isinstance(value, dict) else value
        try:
            normal = tuple((str(pattern), float(lr)) for pattern, lr in groups)
            for pattern, _ in normal:
                re.compile(pattern)
        except (TypeError, ValueError, re.error) as err:
            raise ValueError(f"give (regex, lr) pairs, e.g. {{'^embedder\\.': 8e-6}} ({err})") from err
        return normal

    @field_validator("schedule", "dropout_rng")
    @classmethod
    def _one_of(cls, value: str, info: ValidationInfo) -> str:
        choices = {"schedule": SCHEDULES, "dropout_rng": DROPOUT_RNGS}[info.field_name]  # schedules: a registry
        if value not in choices:
            raise ValueError(f"unknown {info.field_name} {value!r}: choose one of {', '.join(choices)}")
        return value

    def updates_per_epoch(self, num_examples: int) -> int:
        return max(1, math.ceil(math.ceil(num_examples / self.batch_size) / self.grad_accum))

    def validation_interval(self, num_examples: int) -> int | None:
        if self.eval_every:
            return self.eval_every
        if self.eval_epochs:
            return max(1, round(self.eval_epochs * self.updates_per_epoch(num_examples)))
        return None

    def total_steps(self, num_examples: int) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.updates_per_epoch(num_examples) * self.epochs))

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


@dataclass
class TrainResult:
    steps: int
    seconds: float
    examples_seen: int
    best_metric: float | None
    best_step: int | None
    history: list[dict] = field(default_factory=list)
    resumed_s: float = 0.0  # of `seconds`, those spent before an interruption (read from the checkpoint resumed)

    @property
    def examples_per_second(self) -> float:
        return self.examples_seen / self.seconds if self.seconds else 0.0


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, bucket: bool) -> list[list[int]]:
    """Shuffled batches of example indices. With bucketing, examples of similar length share a batch (less
    padding): sort within windows of 50 batches, then shuffle the batch order. Deterministic in (seed, epoch)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    if bucket:
        window = batch_size * 50
        order = [i for a in range(0, len(order), window)
                 for i in sorted(order[a:a + window], key=lambda j: -lengths[j])]
    batches = [order[a:a + batch_size] for a in range(0, len(order), batch_size)]
    if bucket:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
    return batches


def lr_factor(cfg: TrainConfig, step: int, total: int, per_epoch: int) -> float:
    """The configured schedule's factor on every group's base learning rate at update `step` (0-based)."""
    return get_schedule(cfg.schedule)(cfg, step, total, per_epoch)


def make_optimizer(model: nn.Module, cfg: TrainConfig, extra_groups: Sequence[dict] = ()) -> torch.optim.Optimizer:
    """AdamW without decay on biases and norms. Fused where the device allows: on CPU it is 5x faster than the
    foreach default, whose sqrt slows down on the exact zeros a pruned weight's moments hold. `extra_groups` are
    callbacks' own parameters (their lr defaults to `cfg.lr`, their weight decay to 0)."""
    patterns = [(re.compile(pattern), lr) for pattern, lr in cfg.lr_groups]
    grouped: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            lr = next((lr for pattern, lr in patterns if pattern.search(name)), cfg.lr)
            no_decay = p.dim() < 2 or "LayerNorm" in name or "norm" in name.lower()
            grouped.setdefault((lr, 0.0 if no_decay else cfg.weight_decay), []).append(p)
    groups = [{"params": ps, "lr": lr, "base_lr": lr, "weight_decay": wd} for (lr, wd), ps in grouped.items()]
    for g in extra_groups:
        lr = g.get("lr", cfg.lr)
        groups.append({**g, "lr": lr, "base_lr": lr, "weight_decay": g.get("weight_decay", 0.0)})
    params = [p for g in groups for p in g["params"]]
    fused = params[0].device.type in ("cpu", "cuda") and all(
        p.dtype in (torch.float32, torch.bfloat16, torch.float16) for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)


def default_loss(model: nn.Module, batch: Batch) -> Any:
    return model(**batch)


def loss_value(outputs: Any) -> torch.Tensor:
    """The loss in what a loss function returned: the tensor itself, or a model output's `.loss`."""
    return outputs if isinstance(outputs, torch.Tensor) else outputs.loss


class _Loop:
    """One call of `train`: the state that lives between updates, each phase a method."""

    def __init__(self, model: nn.Module, examples: Sequence[Any], collate: Callable[[list[Any]], Batch],
                 cfg: TrainConfig, lengths: Sequence[int] | None, evaluate: Callable[[nn.Module], float] | None,
                 maximize: bool, callbacks: Sequence[Callback], checkpoint_dir: str | Path | None,
                 loss_fn: Callable[[nn.Module, Batch], Any]) -> None:
        from accelerate import Accelerator

        self.accelerator = Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no",
                                       cpu=not torch.cuda.is_available())
        self.raw_model, self.examples, self.collate, self.cfg = model, examples, collate, cfg
        self.evaluate, self.maximize, self.loss_fn = evaluate, maximize, loss_fn
        self.callbacks = in_order(list(callbacks))
        extra = [g for cb in self.callbacks for g in cb.parameter_groups(model)]
        self.optimizer = make_optimizer(model, cfg, extra)
        self.model, self.wrapped_optimizer = self.accelerator.prepare(model, self.optimizer)
        self.total = cfg.total_steps(len(examples))
        self.per_epoch = cfg.updates_per_epoch(len(examples))
        self.eval_every = cfg.validation_interval(len(examples))
        self.lengths = lengths if lengths is not None else [1] * len(examples)
        self.state = LoopState(model, self.optimizer, 0, self.total,
                               schedule=lambda step: lr_factor(cfg, step, self.total, self.per_epoch))
        self.history: list[dict] = []
        self.best: dict | None = None
        self.epoch = self.position = self.seen = 0
        self.earlier_s, self.start = 0.0, time.perf_counter()
        self.root = Path(checkpoint_dir) if checkpoint_dir else None
        if self.accelerator.device.type == "cpu":
            keep_freed_memory()
        elif cfg.dropout_rng != "torch":
            raise SmcBenchError(f"dropout_rng {cfg.dropout_rng!r} draws masks on the CPU; on "
                                f"{self.accelerator.device.type} keep torch's (set dropout_rng: torch)")

    def dropout(self) -> contextlib.AbstractContextManager:
        return dropout_mode(self.cfg.dropout_rng, self.accelerator.device)

    def restore(self) -> None:
        resumed = load_checkpoint(self.root) if self.root else None
        if not resumed:
            seed_everything(self.cfg.seed)
            return
        weights, extra, self.best = resumed
        # Masks first (setting them zeroes what they prune), then the weights and optimizer state they fit.
        for cb, cb_state in zip(self.callbacks, extra["callbacks"], strict=True):
            cb.load_state_dict(cb_state)
        load_model_tensors(self.raw_model, weights)
        load_optimizer_state(self.optimizer, extra["optimizer"])
        set_rng_state(extra["rng"])
        self.state.step, self.epoch, self.position, self.seen = (extra["step"], extra["epoch"], extra["position"],
                                                                 extra["seen"])
        self.history = extra["history"]
        # A resumed run's time counts what it trained before the interruption (older checkpoints lack it): the
        # dry run learns its predictions from finished runs, and a run resumed at its last update took 2 s.
        self.earlier_s = float(extra.get("seconds", 0.0))

    def update(self, group: list[list[int]]) -> None:
        """One optimizer update over the micro-batches in `group`."""
        state, accelerator = self.state, self.accelerator
        count = sum(len(b) for b in group)
        for indices in group:
            with record_function("collate"):
                batch = {k: v.to(accelerator.device) for k, v in self.collate([self.examples[i]
                                                                                for i in indices]).items()}
            with record_function("forward"), accelerator.autocast(), self.dropout(), padded_head(self.raw_model):
                outputs = self.loss_fn(self.model, batch)
                loss = loss_value(outputs)
                for cb in self.callbacks:
                    loss = cb.loss(state, batch, outputs, loss)
                loss = loss * (len(indices) / count)
            with record_function("backward"):
                accelerator.backward(loss)
        with record_function("sparsity callbacks"):
            for cb in self.callbacks:
                cb.on_after_backward(state)
        with record_function("optimizer"):
            if self.cfg.max_grad_norm:
                accelerator.clip_grad_norm_(self.raw_model.parameters(), self.cfg.max_grad_norm)
            factor = state.schedule(state.step)
            for cb in self.callbacks:
                factor = cb.lr_factor(state, factor)
            for g in self.optimizer.param_groups:
                g["lr"] = g["base_lr"] * factor
            self.wrapped_optimizer.step()
            self.wrapped_optimizer.zero_grad(set_to_none=True)
        self.position += len(group)
        self.seen += count
        state.step += 1
        with record_function("sparsity callbacks"):
            for cb in self.callbacks:
                cb.on_step_end(state)

    def validate(self) -> dict | None:
        """Validate; the checkpoint to keep as the best so far, if this one is."""
        if self.evaluate is None:
            return None
        state, model = self.state, self.raw_model
        for cb in self.callbacks:
            cb.on_evaluate_begin(state)
        model.eval()
        with torch.no_grad():
            metric = float(self.evaluate(model))
        model.train()
        for cb in self.callbacks:
            cb.on_evaluate_end(state)
        selectable = all(cb.selectable(state) for cb in self.callbacks)
        self.history.append({"step": state.step, "examples": self.seen, "metric": metric, "selectable": selectable})
        best = self.best
        improved = best is None or (metric > best["metric"] if self.maximize else metric < best["metric"])
        if not (selectable and improved):
            return None
        self.best = {"model": model_tensors(model), "callbacks": [cb.state_dict() for cb in self.callbacks],
                     "metric": metric, "step": state.step}
        return self.best

    def checkpoint(self) -> None:
        keep = self.validate()
        if self.root and self.accelerator.is_main_process:  # several GPU processes: one writer
            extra = {"optimizer": optimizer_state(self.optimizer), "rng": rng_state(),
                     "callbacks": [cb.state_dict() for cb in self.callbacks], "step": self.state.step,
                     "epoch": self.epoch, "position": self.position, "seen": self.seen, "history": self.history,
                     "seconds": self.earlier_s + time.perf_counter() - self.start}
            save_checkpoint(self.root, self.state.step, self.raw_model, extra, keep)

    def run(self, progress: bool, description: str) -> TrainResult:
        self.restore()
        for cb in self.callbacks:
            cb.on_train_begin(self.state)
        self.start = time.perf_counter()
        self.model.train()
        bar = tqdm(total=self.total, initial=self.state.step, desc=description, disable=not progress, leave=False)
        accelerator, cfg = self.accelerator, self.cfg
        while self.state.step < self.total:
            batches = epoch_batches(self.lengths, cfg.batch_size, cfg.seed, self.epoch, cfg.bucket_by_length)
            batches = batches[accelerator.process_index::accelerator.num_processes]
            while self.position < len(batches) and self.state.step < self.total:
                self.update(batches[self.position:self.position + cfg.grad_accum])
                bar.update(1)
                step = self.state.step
                if step == self.total or (self.eval_every and step % self.eval_every == 0):
                    self.checkpoint()
            if self.position >= len(batches):
                self.epoch, self.position = self.epoch + 1, 0
        bar.close()
        seconds = self.earlier_s + time.perf_counter() - self.start
        best = self.best
        if best is not None:
            for cb, cb_state in zip(self.callbacks, best["callbacks"], strict=True):
                cb.load_state_dict(cb_state)
            load_model_tensors(self.raw_model, best["model"])
        self.raw_model.eval()
        return TrainResult(steps=self.state.step, seconds=seconds, examples_seen=self.seen,
                           best_metric=best["metric"] if best else None, best_step=best["step"] if best else None,
                           history=self.history, resumed_s=self.earlier_s)


def train(
    model: nn.Module,
    examples: Sequence[Any],
    collate: Callable[[list[Any]], Batch],
    cfg: TrainConfig,
    *,
    lengths: Sequence[int] | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    maximize: bool = True,
    callbacks: Sequence[Callback] = (),
    checkpoint_dir: str | Path | None = None,
    loss_fn: Callable[[nn.Module, Batch], Any] = default_loss,
    progress: bool = True,
    description: str = "train",
) -> TrainResult:
    """Train `model` in place for `cfg.total_steps` updates and leave the selected model in it.

    `evaluate(model)` returns a validation metric (`maximize`: higher is better, else lower); with it, the best
    checkpoint among those every callback allows (`Callback.selectable`) is restored at the end. `loss_fn` returns
    the loss or a model output with `.loss` (callbacks see it). With `checkpoint_dir`, a run resumes from its newest
    complete checkpoint.
    """
    if not examples:
        raise SmcBenchError("no training examples")
    loop = _Loop(model, examples, collate, cfg, lengths, evaluate, maximize, callbacks, checkpoint_dir, loss_fn)
    return loop.run(progress, description)
