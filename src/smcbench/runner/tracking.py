"""Optional experiment tracking: each finished run's config and metrics sent to MLflow or Weights & Biases.

Never required: results.db and the run folders are the record; a tracker is a view for users who already use one.
`--log mlflow` writes to $MLFLOW_TRACKING_URI when set, else to a local file store at `<out>/mlruns` (MLflow 3
keeps that backend in maintenance mode and refuses it unless MLFLOW_ALLOW_FILE_STORE is set, which we do for that
folder only; point MLFLOW_TRACKING_URI at sqlite:///... or a server for more). `--log wandb` uses the user's
wandb login and settings (WANDB_PROJECT, default smc-bench; WANDB_MODE=offline works without a network).
One tracker run per smc-bench run, named `<method>@<sparsity>`, grouped by task, tagged with the run id.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from smcbench.errors import SmcBenchError

TRACKERS = ("mlflow", "wandb")


def check_tracker(name: str | None, where: str = "log") -> None:
    """Fails before any work when the tracker is unknown or its package is missing."""
    if name is None:
        return
    if name not in TRACKERS:
        raise SmcBenchError(f"{where}: unknown tracker {name!r}: choose {', '.join(TRACKERS)}")
    try:
        __import__(name)
    except ImportError as err:
        raise SmcBenchError(f"{where} {name}: the package is not installed: pip install "
                            f"{'mlflow-skinny' if name == 'mlflow' else 'wandb'}") from err


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """Nested config → flat `group.key` parameters (lists and other values as JSON text)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


def numbers(record: dict) -> dict[str, float]:
    """The run's scalar results: its metrics, achieved sparsity, best validation value, times."""
    out = {k: float(v) for k, v in record.get("metrics", {}).items() if isinstance(v, int | float)}
    for key in ("achieved_sparsity", "target_sparsity", "validation_best", "steps", "train_s", "wall_s"):
        if isinstance(record.get(key), int | float):
            out[key] = float(record[key])
    return out


def _log_mlflow(record: dict, out: Path) -> None:
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = (out / "mlruns").resolve().as_uri()
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(f"smc-bench/{record['task']}")
    with mlflow.start_run(run_name=f"{record['method']}@{record['target_sparsity']:.3f}"):
        mlflow.log_params(flatten(record["config"]))
        mlflow.log_metrics(numbers(record))
        mlflow.set_tags({"smcbench.run_id": record["run_id"], "smcbench.dir": record.get("dir", ""),
                         "smcbench.model": record["model"], "smcbench.seed": str(record["seed"])})


def _log_wandb(record: dict, out: Path) -> None:
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "smc-bench"), group=record["task"],
                     name=f"{record['method']}@{record['target_sparsity']:.3f}", config=record["config"],
                     tags=[record["method"], record["model"]], dir=str(out), reinit="finish_previous")
    run.summary.update({**numbers(record), "run_id": record["run_id"]})
    run.finish()


LOGGERS: dict[str, Callable[[dict, Path], None]] = {"mlflow": _log_mlflow, "wandb": _log_wandb}


def log_run(tracker: str | None, record: dict, out: Path) -> None:
    """Send one finished run to the tracker (nothing when `tracker` is None)."""
    if tracker is not None:
        LOGGERS[tracker](record, out)
