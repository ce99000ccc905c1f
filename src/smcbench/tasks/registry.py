"""The task registry and the interface every task offers to the methods and the runner."""

from __future__ import annotations

import importlib
import os
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import nn

from smcbench.errors import SmcBenchError
from smcbench.metrics import Metric
from smcbench.outcomes import Outcomes
from smcbench.settings import Settings

_TASKS: dict[str, Callable[[TaskSpec], TaskRun]] = {}
_INFO: dict[str, TaskInfo] = {}


class NoOptions(Settings):
    """A task without options of its own."""


@dataclass(frozen=True)
class TaskInfo:
    default_model: str = "minilm"
    folds: int = 0  # cross-validation folds (0: a fixed train/evaluation split)
    options: type[Settings] = NoOptions  # the task's own options (e.g. WinoGrande's training size)
    # Bumped when the task's data handling, model or evaluation changes what a run means (part of the run's id).
    version: int = 1


class DataSettings(Settings):
    """How much of a task's data a run uses: the fields every task has (the grid's task entries and the CLI take
    them). A task's own options go in `options`, validated by the schema it registers."""

    train_size: int | None = Field(None, ge=1, description="Use the first N training examples (after the "
                                   "validation split is set aside).")
    val_size: int = Field(200, ge=1, description="Validation examples carved from the end of the training data, "
                          "for model selection.")
    eval_size: int | None = Field(None, ge=1, description="Use the first N evaluation examples.")
    max_length: int = Field(128, ge=8, description="Tokens per input (per choice for multiple choice).")
    options: dict[str, Any] = Field(default_factory=dict, description="The task's own options, KEY=VALUE "
                                    "(e.g. WinoGrande's train_variant=m).")


class TaskSpec(DataSettings):
    """Everything that fixes a task's data and model: part of every run's identity (but the data folder)."""

    task: str
    model: str | None = None  # None: the task's default model
    data_dir: str | None = None
    seed: int = 0
    fold: int | None = None  # cross-validation fold (MAWPS, ASDiv-A: 0..4); None where a task has no folds

    def __init__(self, task: str, model: str | None = None, data_dir: str | None = None, **values: Any) -> None:
        super().__init__(task=task, model=model, data_dir=data_dir, **values)

    def identity(self) -> dict:
        """The fields that change results and differ from their defaults (the data folder's location does not)."""
        out = super().identity()
        out.pop("data_dir", None)
        out["task"] = self.task  # always named, even if it were ever given a default
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
    metric: Metric = Metric("accuracy")  # a task with a chance level or another metric sets its own

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.data_dir = Path(spec.data_dir) if spec.data_dir else default_data_dir()
        self.options = task_info(spec.task).options(**spec.options)

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
        """The primary metric on the validation split (carved from the training data), for model selection."""

    @abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Metrics on the evaluation split: the primary metric (`self.metric.name`), the secondary ones, and
        `eval_examples`."""

    # Evaluation examples assumed by the disk estimate when the spec does not cap them (a dry run reads no data).
    typical_eval_examples: int = 2000

    def outcome_bytes(self, with_texts: bool) -> int:
        """About what this task's outcomes file takes (the dry run's disk estimate): ~24 bytes an example, ~200
        more with the example's text (the dense run keeps it)."""
        return (self.spec.eval_size or self.typical_eval_examples) * (24 + (200 if with_texts else 0))

    def evaluate_outcomes(self, model: nn.Module) -> tuple[dict[str, float], Outcomes | None]:
        """`evaluate`'s metrics and, from the same pass, the per-example outcomes a paired test needs
        (smcbench.outcomes; example ids the same for every run of this task configuration). A task that cannot
        give them returns None: its verdicts then use the paper's rule, and the report says so."""
        return self.evaluate(model), None

    def split_training(self, rows: list) -> tuple[list, list]:
        """(training pool, validation): validation is carved from the end of the training data (model selection
        never sees the evaluation split), then the pool is cut to the spec's train size."""
        val_size = min(self.spec.val_size, len(rows) // 5)
        if val_size < 1:
            raise SmcBenchError(f"{self.name}: too few training examples ({len(rows)}) to carve a validation split")
        if val_size < self.spec.val_size:  # said in the result's data notes and so in the report
            self.split_notes = [f"Validation: {val_size} examples, not the {self.spec.val_size} asked: at most a "
                                f"fifth of the {len(rows)} training rows is set aside."]
        pool, val = rows[: len(rows) - val_size], rows[len(rows) - val_size:]
        if self.spec.train_size is not None:
            if self.spec.train_size < 1:
                raise SmcBenchError(f"train size must be >= 1, got {self.spec.train_size}")
            pool = pool[: self.spec.train_size]
        return pool, val

    split_notes: list[str] = []  # what split_training had to decide (set per instance when it does)

    def run_provenance(self) -> dict[str, Any]:
        """`data_provenance()` with what this run's data handling decided added to its notes."""
        data = dict(self.data_provenance())
        if self.split_notes:
            data["notes"] = [*data.get("notes", []), *self.split_notes]
        return data

    def train_defaults(self) -> dict[str, Any]:
        """Training settings this task uses unless the user sets them (TrainConfig field -> value)."""
        return {}

    def method_defaults(self) -> dict[str, Any]:
        """Method settings this task uses unless the user sets them (e.g. which tensors a family prunes); each
        method takes the ones it declares."""
        return {}

    def data_provenance(self) -> dict[str, Any]:
        """What a reader of the results must know about the data: facts (e.g. class boundaries) and `notes`, short
        sentences the report prints under the task (e.g. a grouping that is inferred, not given)."""
        return {}

    def provenance(self) -> dict[str, Any]:
        """Where the model comes from (a hub id or folder; a model pretrained here names its corpus)."""
        return {"model": self.spec.model}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        """The training loss, or the model's output holding it as `.loss` (training callbacks may read it)."""
        return model(**batch)

    def inference_examples(self) -> Sequence[Any]:
        """The evaluation examples, ready for `collate`, in order: what `bench inference` times the model on."""
        raise SmcBenchError(f"{self.name}: this task gives no inference inputs (bench inference times the tasks "
                            "that do: commonsense, protein)")

    def inference_forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """What serving computes on a collated batch (labels dropped): the output every inference backend is
        checked on."""
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits

    def score_batches(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Training batches in a seeded order, for data-dependent pruning scores (SNIP)."""
        examples, _ = self.train_examples()
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(self.spec.seed)).tolist()
        for a in range(0, len(order), batch_size):
            yield self.collate([examples[i] for i in order[a:a + batch_size]])


def register_task(name: str, default_model: str = "minilm", folds: int = 0, options: type[Settings] = NoOptions,
                  version: int = 1) -> Callable[[Callable[[TaskSpec], TaskRun]], Callable[[TaskSpec], TaskRun]]:
    """Register a task factory under `family/dataset`; `options` is the schema of the task's own options;
    `version`: bump it when a change to the task changes what its runs mean."""

    def add(factory: Callable[[TaskSpec], TaskRun]) -> Callable[[TaskSpec], TaskRun]:
        _TASKS[name] = factory
        _INFO[name] = TaskInfo(default_model, folds, options, version)
        return factory

    return add


FAMILY_MODELS: dict[str, str] = {}  # family → what its `--model` takes, for the CLI's help


def describe_family(family: str, models: str) -> None:
    """Say what a family's tasks take as `--model` (names, hub ids, folders): `smc-bench run --help` lists it."""
    FAMILY_MODELS[family] = models


_loaded = False


def _load_families() -> None:
    """Import every family: each sub-package of smcbench.tasks, and any package registered under the
    `smcbench.tasks` entry-point group (a family that lives outside this repository)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if module.ispkg:
            importlib.import_module(f"smcbench.tasks.{module.name}")
    for entry in entry_points(group="smcbench.tasks"):
        entry.load()


def known_tasks() -> list[str]:
    _load_families()
    return sorted(_TASKS)


def task_info(name: str) -> TaskInfo:
    _load_families()
    if name not in _TASKS:
        raise SmcBenchError(f"unknown task {name!r}: choose one of {', '.join(sorted(_TASKS))}")
    return _INFO[name]


def resolve_spec(spec: TaskSpec) -> TaskSpec:
    """Fill what the user left open with the task's defaults (model; fold 0 of a cross-validated task) and check
    the task's options, so equal runs get equal identities. A fold on a task without folds is an error."""
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
    options = info.options.build(f"{spec.task} options", **spec.options).identity()  # defaults left out
    if options != spec.options:
        changes["options"] = options
    return spec.model_copy(update=changes) if changes else spec


def get_task(spec: TaskSpec) -> TaskRun:
    spec = resolve_spec(spec)  # also checks the name
    return _TASKS[spec.task](spec)
