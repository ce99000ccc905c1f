"""The task registry and the interface every task offers to the methods and the runner."""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smcbench.errors import SmcBenchError

FAMILIES = ("commonsense", "arithmetic")
_TASKS: dict[str, Callable[[TaskSpec], TaskRun]] = {}
_INFO: dict[str, TaskInfo] = {}


@dataclass(frozen=True)
class TaskInfo:
    default_model: str = "minilm"
    folds: int = 0  # cross-validation folds (0: a fixed train/evaluation split)


@dataclass(frozen=True)
class TaskSpec:
    """Everything that fixes a task's data and model: part of every run's identity."""

    task: str
    model: str = "minilm"
    data_dir: str | None = None
    train_size: int | None = None  # first N training examples (after the validation split is set aside)
    val_size: int = 200  # validation examples carved from the end of the training data, for model selection
    eval_size: int | None = None  # first N evaluation examples
    max_length: int = 128
    train_variant: str | None = None  # e.g. WinoGrande's xs, s, m, l
    seed: int = 0
    fold: int | None = None  # cross-validation fold (MAWPS, ASDiv-A: 0..4); None where a task has no folds

    def identity(self) -> dict:
        """The fields that change results (the data folder's location does not)."""
        out = asdict(self)
        out.pop("data_dir")
        return out


def default_data_dir() -> Path:
    """`--data-dir`, else $SMCBENCH_DATA, else ../shared/data beside the working directory when present."""
    env = os.environ.get("SMCBENCH_DATA")
    if env:
        return Path(env)
    for base in (Path.cwd(), *Path.cwd().parents[:2]):
        candidate = base / ".." / "shared" / "data"
        if candidate.is_dir():
            return candidate.resolve()
    return Path("data")


class TaskRun(ABC):
    """One task with one model and data configuration: what the sparse methods need."""

    name: str
    metric: str = "accuracy"
    chance: float = 0.0

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.data_dir = Path(spec.data_dir) if spec.data_dir else default_data_dir()

    @abstractmethod
    def initial_model(self) -> nn.Module:
        """θ0: the pretrained weights with a head initialised from the spec's seed (the same every call)."""

    @abstractmethod
    def train_examples(self) -> tuple[Sequence[Any], list[int]]:
        """Training examples (ready for `collate`) and their lengths, for bucketing."""

    @abstractmethod
    def collate(self, examples: list[Any]) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def validate(self, model: nn.Module) -> float:
        """The model-selection metric on the validation split (carved from the training data)."""

    @abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Metrics on the evaluation split; includes `self.metric`."""

    def split_training(self, rows: list) -> tuple[list, list]:
        """(training pool, validation): validation is carved from the end of the training data (model selection
        never sees the evaluation split), then the pool is cut to the spec's train size."""
        val_size = min(self.spec.val_size, len(rows) // 5)
        if val_size < 1:
            raise SmcBenchError(f"{self.name}: too few training examples ({len(rows)}) to carve a validation split")
        pool, val = rows[: len(rows) - val_size], rows[len(rows) - val_size:]
        if self.spec.train_size is not None:
            if self.spec.train_size < 1:
                raise SmcBenchError(f"train size must be >= 1, got {self.spec.train_size}")
            pool = pool[: self.spec.train_size]
        return pool, val

    def train_defaults(self) -> dict[str, Any]:
        """Training settings this task uses unless the user sets them (TrainConfig field -> value)."""
        return {}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss

    def score_batches(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Training batches in a seeded order, for data-dependent pruning scores (SNIP)."""
        examples, _ = self.train_examples()
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(self.spec.seed)).tolist()
        for a in range(0, len(order), batch_size):
            yield self.collate([examples[i] for i in order[a:a + batch_size]])


def register_task(name: str, default_model: str = "minilm",
                  folds: int = 0) -> Callable[[Callable[[TaskSpec], TaskRun]], Callable[[TaskSpec], TaskRun]]:
    def add(factory: Callable[[TaskSpec], TaskRun]) -> Callable[[TaskSpec], TaskRun]:
        _TASKS[name] = factory
        _INFO[name] = TaskInfo(default_model, folds)
        return factory

    return add


def _load_families() -> None:
    for family in FAMILIES:
        importlib.import_module(f"smcbench.tasks.{family}")


def known_tasks() -> list[str]:
    _load_families()
    return sorted(_TASKS)


def task_info(name: str) -> TaskInfo:
    _load_families()
    if name not in _TASKS:
        raise SmcBenchError(f"unknown task {name!r}: choose one of {', '.join(sorted(_TASKS))}")
    return _INFO[name]


def resolve_spec(spec: TaskSpec) -> TaskSpec:
    """Fill what the user left open with the task's defaults (model; fold 0 of a cross-validated task), so equal
    runs get equal identities. A fold on a task without folds is an error."""
    info = task_info(spec.task)
    changes: dict[str, Any] = {}
    if not spec.model:
        changes["model"] = info.default_model
    if info.folds and spec.fold is None:
        changes["fold"] = 0
    if spec.fold is not None and not 0 <= spec.fold < max(info.folds, 1):
        where = f"folds are 0..{info.folds - 1}" if info.folds else "it has no folds"
        raise SmcBenchError(f"{spec.task}: fold {spec.fold} does not exist: {where}")
    if not info.folds and spec.fold is not None:
        raise SmcBenchError(f"{spec.task}: it has no folds; leave the fold unset")
    return replace(spec, **changes) if changes else spec


def get_task(spec: TaskSpec) -> TaskRun:
    spec = resolve_spec(spec)  # also checks the name
    return _TASKS[spec.task](spec)
