"""Grid specs: YAML validated with pydantic. Unknown keys are errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from smcbench.errors import SmcBenchError
from smcbench.sparsity import imp_levels


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskEntry(Strict):
    task: str
    train_size: int | None = Field(None, ge=1)
    val_size: int = Field(200, ge=1)
    eval_size: int | None = Field(None, ge=1)
    max_length: int = Field(128, ge=8)
    train_variant: str | None = None
    folds: list[int] | None = None  # cross-validated tasks: which folds (default: all of them)


class TrainSettings(Strict):
    """Training settings; a key left out takes the task's default (e.g. GTS: lr 1e-3, StepLR), then the loop's."""

    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    warmup_ratio: float | None = Field(None, ge=0, le=1)
    batch_size: int | None = Field(None, ge=1)
    grad_accum: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0)
    max_steps: int | None = Field(None, ge=1)
    eval_every: int | None = Field(None, ge=1)
    eval_epochs: float | None = Field(None, gt=0)
    max_grad_norm: float | None = Field(None, gt=0)
    lr_groups: dict[str, float] | None = None  # parameter-name regex -> learning rate
    schedule: Literal["linear", "step", "constant"] | None = None
    step_epochs: float | None = Field(None, gt=0)
    step_gamma: float | None = Field(None, gt=0, le=1)

    def overrides(self) -> dict:
        """The keys the spec sets (an explicit null, e.g. max_grad_norm: null, counts as set)."""
        out = self.model_dump(exclude_unset=True)
        if out.get("lr_groups") is not None:
            out["lr_groups"] = tuple(out["lr_groups"].items())
        return out


class MethodSettings(Strict):
    preset: Literal["all", "encoder"] = "all"
    interval: int | None = Field(None, ge=1)
    gmp_start: float = Field(0.1, ge=0, le=1)
    gmp_end: float = Field(0.8, ge=0, le=1)
    rigl_alpha: float = Field(0.3, ge=0, le=1)
    rigl_end: float = Field(0.75, ge=0, le=1)
    snip_batches: int = Field(8, ge=1)


class GridSpec(Strict):
    name: str = "grid"
    out: str = "runs"
    data_dir: str | None = None
    tasks: list[TaskEntry] = Field(min_length=1)
    models: list[str] = Field(default_factory=lambda: ["minilm"], min_length=1)
    methods: list[str] = Field(min_length=1)
    sparsities: list[float] | Literal["grid"] = "grid"
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    train: TrainSettings = Field(default_factory=TrainSettings)
    settings: MethodSettings = Field(default_factory=MethodSettings)

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
        return GridSpec.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise SmcBenchError(f"{path}: {where}: {first['msg']}") from err
