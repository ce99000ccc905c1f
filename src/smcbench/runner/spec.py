"""Grid specs: YAML validated with pydantic. Unknown keys are errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from smcbench.errors import SmcBenchError
from smcbench.methods import get_method, method_settings
from smcbench.settings import Settings, one_line
from smcbench.sparsity import imp_levels
from smcbench.tasks.registry import DataSettings
from smcbench.training import TrainConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskEntry(DataSettings):
    """A task with its data settings (the fields every task has, from tasks.registry.DataSettings) and options."""

    task: str
    folds: list[int] | None = None  # cross-validated tasks: which folds (default: all of them)


class GridSpec(Strict):
    name: str = "grid"
    out: str = "runs"
    data_dir: str | None = None
    tasks: list[TaskEntry] = Field(default_factory=list)
    models: list[str] = Field(default_factory=lambda: ["minilm"], min_length=1)
    # A method name, or {name: {setting: value}} for settings of that method alone.
    methods: list[str | dict[str, dict[str, Any]]] = Field(default_factory=list)
    # A grid of grids: part name → another spec (a preset name or a file), each run with its own out, settings and
    # parts; `smc-bench grid SPEC --part NAME` selects some. A spec has either `include` or its own tasks and methods.
    include: dict[str, str] = Field(default_factory=dict)
    sparsities: list[float] | Literal["grid"] = "grid"
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    # Training settings (training.TrainConfig's fields); a key left out takes the task's default, then the loop's.
    train: dict[str, Any] = Field(default_factory=dict)
    # Method settings shared by the spec's methods: each method takes the keys its schema declares.
    settings: dict[str, Any] = Field(default_factory=dict)
    # More sub-grids run with this one: each entry replaces some of the fields above (e.g. other tasks, methods
    # and levels, as the paper's Table 1 beside its main grid). Runs they share (the dense fine-tune) run once.
    also: list[dict[str, Any]] = Field(default_factory=list)
    # Which runs keep their model weights (runner.single.KEEP_WEIGHTS); masks, config and metrics are always kept.
    keep_weights: Literal["needed", "all", "none"] = "needed"
    # An experiment tracker every finished run is also sent to (runner.tracking): mlflow or wandb.
    log: Literal["mlflow", "wandb"] | None = None

    @model_validator(mode="after")
    def _grid_or_grids(self) -> GridSpec:
        if self.include and (self.tasks or self.methods or self.also):
            raise ValueError("include: a spec that includes other specs has no tasks, methods or also of its own")
        if not self.include and not (self.tasks and self.methods):
            raise ValueError("give tasks and methods (at least one each), or include other specs")
        return self

    def included(self, only: list[str] | None = None) -> list[tuple[str, GridSpec]]:
        """The specs this one includes, by part name (`only`: these parts), each loaded and checked; a spec
        without `include` is its own single part."""
        if not self.include:
            return [(self.name, self)]
        unknown = sorted(set(only or ()) - set(self.include))
        if unknown:
            raise SmcBenchError(f"--part {unknown[0]!r}: {self.name} has the parts {', '.join(self.include)}")
        return [(part, load_spec(ref)) for part, ref in self.include.items() if not only or part in only]

    def parts(self) -> list[GridSpec]:
        """This grid without `also`, then one grid per `also` entry (the fields it sets over this grid's)."""
        base = self.model_dump(exclude={"also"})
        out = [self.model_copy(update={"also": []})]
        for k, part in enumerate(self.also):
            if {"also", "out", "data_dir", "keep_weights", "log"} & part.keys():
                raise SmcBenchError(f"also.{k}: a part shares the grid's out, data_dir, keep_weights and log and "
                                    "cannot nest `also`")
            try:
                out.append(GridSpec.model_validate({**base, "name": f"{self.name}/{k}", **part}))
            except ValidationError as err:
                raise SmcBenchError(one_line(err, f"also.{k}")) from err
        return out

    @field_validator("sparsities")
    @classmethod
    def _levels(cls, value):
        if value == "grid":
            return imp_levels(10)
        if not value:
            raise ValueError("give at least one sparsity, or 'grid'")
        for s in value:
            if not 0 < s < 1:
                raise ValueError(f"sparsity {s} is not in (0, 1)")
        return value

    def method_entries(self) -> list[tuple[str, dict[str, Any]]]:
        """(method name, its own settings) per entry of `methods`."""
        out = []
        for entry in self.methods:
            if isinstance(entry, str):
                out.append((entry, {}))
            elif len(entry) == 1:
                [(name, own)] = entry.items()
                out.append((name, own or {}))
            else:
                raise SmcBenchError(f"methods: {entry}: give one method per entry, e.g. {{gmp: {{interval: 100}}}}")
        # A method may be listed again with other settings (a variant, e.g. Table 1's module subsets); the same
        # method with the same settings twice would only repeat runs.
        seen = [(name, repr(sorted(own.items()))) for name, own in out]
        repeated = sorted({name for name, key in seen if seen.count((name, key)) > 1})
        if repeated:
            raise SmcBenchError(f"methods: {repeated[0]} is listed twice with the same settings")
        return out

    def method_settings(self, name: str, own: dict[str, Any]) -> Settings:
        """The settings of one method: the shared `settings`, then its own."""
        shared = method_settings(name, self.settings, "settings")
        if not own:
            return shared
        return method_settings(name, {**shared.model_dump(), **own}, f"methods: {name}", strict=True)

    def overrides(self) -> dict[str, Any]:
        """The training settings the spec sets, checked against training.TrainConfig."""
        return TrainConfig.validate_overrides(self.train, "train")

    def check(self) -> None:
        """Everything a schema alone cannot check, before any run starts: method names and settings, training
        settings, task names and options."""
        from smcbench.tasks import TaskSpec
        from smcbench.tasks.registry import resolve_spec

        if self.include:
            self.included()  # each is loaded, and so checked
            return
        if self.also:
            for part in self.parts():
                part.check()
            return
        for name, own in self.method_entries():
            get_method(name)
            self.method_settings(name, own)
        self.overrides()
        for entry in self.tasks:
            resolve_spec(TaskSpec(entry.task, options=entry.options))


PRESETS_DIR = Path(__file__).parent / "presets"


def load_spec(path_or_preset: str) -> GridSpec:
    """A YAML file, or the name of a shipped preset (`demo`, `paper`)."""
    path = Path(path_or_preset)
    if not path.is_file():
        preset = PRESETS_DIR / f"{path_or_preset}.yaml"
        if not preset.is_file():
            names = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
            raise SmcBenchError(f"no spec file {path_or_preset!r} and no preset of that name (presets: {names})")
        path = preset
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SmcBenchError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise SmcBenchError(f"{path}: a spec is a YAML mapping with tasks, methods, ...")
    try:
        spec = GridSpec.model_validate(data)
        spec.check()
    except ValidationError as err:
        raise SmcBenchError(one_line(err, str(path))) from err
    except SmcBenchError as err:
        raise SmcBenchError(f"{path}: {err}") from err
    return spec
