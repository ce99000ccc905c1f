"""Runs written under an older identity schema, renamed once to their current ids.

Schema 1 hashed every field of the task, training and method settings, so every new setting changed every id.
Schema 2 (runner.identity) hashes only what differs from the defaults and only the settings the method declares.
`migrate(out)` finds each schema-1 run folder under `out`, computes its schema-2 config and id, renames the
folder, replaces its database row and rewrites its config.json and result.json, in an order that a crash at any
point leaves resumable (running it again finishes the job). A marker file records that `out` is up to date, so
later calls cost one file read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from smcbench.errors import SmcBenchError
from smcbench.methods import get_method, method_settings
from smcbench.runner.identity import SCHEMA_VERSION, config_id, run_config
from smcbench.runner.store import ResultStore
from smcbench.tasks import TaskSpec
from smcbench.tasks.registry import resolve_spec, task_info
from smcbench.training import TrainConfig
from smcbench.training.checkpoint import write_json

MARKER = "schema.json"


def upgrade_v1(config: dict) -> dict:
    """The schema-2 config of a schema-1 one. Schema 1's `train_variant` became a task option (WinoGrande's)."""
    task = dict(config["task"])
    variant = task.pop("train_variant", None)
    options = {}
    if variant is not None and "train_variant" in task_info(task["task"]).options.model_fields:
        options["train_variant"] = variant
    spec = resolve_spec(TaskSpec(**task, options=options))
    method = config["method"]
    get_method(method)  # an unknown method is an error, not a silent rename
    settings = method_settings(method, config.get("settings", {}), "schema-1 settings")
    return run_config(spec.identity(), TrainConfig(**config["train"]), method, settings, config["sparsity"])


def migrate(out: str | Path, say: Callable[[str], None] | None = None) -> int:
    """Rename every schema-1 run under `out` to its current id; returns how many were migrated."""
    out = Path(out)
    marker = out / MARKER
    if not out.is_dir():
        return 0
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("schema") == SCHEMA_VERSION:
                return 0
        except (OSError, json.JSONDecodeError):
            pass
    store = ResultStore(out / "results.db")
    moved, problems = 0, []
    for result_path in sorted([*out.glob("runs/*/*/*/result.json"), *out.glob("dense/*/result.json")]):
        folder = result_path.parent
        if folder.name.startswith("."):
            continue  # being written
        try:
            record = json.loads(result_path.read_text())
            config = record.get("config") or {}
            if config.get("schema") == SCHEMA_VERSION:
                continue
            new_config = upgrade_v1(config)
        except (OSError, json.JSONDecodeError, KeyError, TypeError, SmcBenchError) as err:
            problems.append(f"{folder}: {err}")
            continue
        new_id = config_id(new_config)
        target = folder.with_name(new_id)
        if target != folder:
            if target.exists():
                problems.append(f"{folder}: the same run as {target} under the new ids; left in place")
                continue
            folder.rename(target)
        old_id = record.get("run_id")
        record.update(run_id=new_id, config=new_config, dir=str(target))
        store.replace(old_id, record)
        write_json(target / "config.json", new_config)
        write_json(target / "result.json", record)
        moved += 1
    if moved and say:
        say(f"migrated {moved} run(s) in {out} to run-id schema {SCHEMA_VERSION} (settings left at their defaults "
            "no longer change a run's id)")
    if problems and say:
        say(f"not migrated ({len(problems)}): " + "; ".join(problems[:3]))
    if not problems:
        write_json(marker, {"schema": SCHEMA_VERSION})
    return moved
