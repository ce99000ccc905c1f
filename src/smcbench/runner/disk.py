"""What a grid will leave on disk, before it runs (`smc-bench grid --dry-run`), and what runs have left.

A finished run keeps config.json and result.json (tens of kB), its masks (bit-packed: one bit per prunable weight)
and, if its retention policy keeps them, its model weights (the state dict as saved). Sizes come from the model
itself when it loads here (built once per task and model); a hub model that cannot be had offline is sized from
the published parameter count (models.PUBLISHED_PARAMETERS, fp32), marked approximate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from smcbench.errors import SmcBenchError
from smcbench.methods import SelectionSettings, get_method
from smcbench.models import published_parameters
from smcbench.runner.grid import Node
from smcbench.runner.single import MASKS, WEIGHTS
from smcbench.settings import Settings
from smcbench.tasks import TaskSpec, get_task

RECORD_BYTES = 64_000  # config.json + result.json of a model with a few hundred prunable tensors (measured: 20-60 kB)
# Plus each run's outcomes.json (per-example outcomes for the paired verdicts): the task's estimate.


@dataclass(frozen=True)
class ModelSize:
    weights_bytes: int  # model.safetensors
    prunable: int  # weights the method's selection prunes: one mask bit each
    approximate: bool


@dataclass(frozen=True)
class RunDisk:
    masks: int
    weights: int
    records: int
    approximate: bool

    @property
    def total(self) -> int:
        return self.masks + self.weights + self.records


_SIZES: dict[tuple[str, str], ModelSize] = {}


def _model_size(spec: TaskSpec, settings: Settings | None) -> ModelSize:
    selection = {k: v for k, v in settings.identity().items() if k in SelectionSettings.model_fields} \
        if settings is not None and hasattr(settings, "sparsifier") else None
    key = (spec.model_dump_json(), json.dumps(selection, sort_keys=True))
    if key not in _SIZES:
        _SIZES[key] = _measure(spec, settings if selection is not None else None)
    return _SIZES[key]


def _measure(spec: TaskSpec, settings: Settings | None) -> ModelSize:
    try:
        model = get_task(spec).initial_model()
    except (SmcBenchError, OSError) as err:
        count = published_parameters(spec.model or "")
        if count is None:
            raise SmcBenchError(f"disk estimate: cannot build {spec.model!r} here and its size is not known: "
                                f"{err}") from err
        return ModelSize(4 * count, count, True)  # fp32; every weight counted as prunable (an upper bound)
    from smcbench.training.checkpoint import model_tensors

    weights = sum(t.numel() * t.element_size() for t in model_tensors(model).values())
    prunable = 0
    if settings is not None:
        prunable = sum(p.numel() for p in settings.sparsifier(model).params.values())
    return ModelSize(weights, prunable, False)


def kept_weights(nodes: list[Node], policy: str) -> set[str]:
    """The ids of the nodes whose weights remain once the grid has run under `policy`."""
    if policy == "all":
        return {n.id for n in nodes}
    if policy == "none":
        return set()
    by_id = {n.id: n for n in nodes}
    # A chain keeps only its latest level: a chained node another node of its method continues from is dropped.
    continued = {d for n in nodes if get_method(n.request.method).chained for d in n.deps
                 if d in by_id and by_id[d].request.method == n.request.method}
    return {n.id for n in nodes if get_method(n.request.method).weights_reused and n.id not in continued}


def _outcome_bytes(spec: TaskSpec, with_texts: bool) -> int:
    return get_task(spec).outcome_bytes(with_texts)


def estimate(nodes: list[Node], policy: str) -> dict[str, RunDisk]:
    """Node id → the disk its finished run occupies under `policy`."""
    kept = kept_weights(nodes, policy)
    out = {}
    for node in nodes:
        r = node.request
        sparse = get_method(r.method).sparse
        size = _model_size(r.spec, r.settings if sparse else None)
        runs = len(node.result_paths())  # a node of a method that shares its levels makes several runs
        masks = math.ceil(size.prunable / 8) * runs if sparse else 0
        weights = size.weights_bytes * runs if node.id in kept else 0
        # Result records and outcomes (the dense reference keeps the examples' texts).
        records = (RECORD_BYTES + _outcome_bytes(r.spec, get_method(r.method).reference)) * runs
        out[node.id] = RunDisk(masks, weights, records, size.approximate)
    return out


def on_disk(folder: Path) -> dict[str, int]:
    """Bytes of a run folder as it is now, by kind: weights, masks, other (configs and results)."""
    sizes = {"weights": 0, "masks": 0, "other": 0}
    for path in folder.iterdir() if folder.is_dir() else []:
        if path.is_file():
            sizes[{WEIGHTS: "weights", MASKS: "masks"}.get(path.name, "other")] += path.stat().st_size
    return sizes


def human(n: float) -> str:
    """Bytes in decimal units, e.g. 1.2 GB."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
