"""Runs written by older versions, moved and renamed once to the current ids and layout.

Schema 1 hashed every field of the task, training and method settings, so every new setting changed every id.
Schema 2 (runner.identity) hashes only what differs from the defaults and only the settings the method declares.
Schema 3: the Random methods' mask seed follows the run's seed unless set (schema 2 fixed it at 0, so a multi-seed
grid measured no mask variance); a schema-2 run of another seed keeps its mask as `random_seed: 0`.
Layout 2 (with schema 3): every run at `<out>/<method>/<task>/<id>/`, where layout 1 had `<out>/runs/<method>/...`
and `<out>/dense/<id>/`.

`migrate(out)` finds each older run folder under `out`, computes its current config and id, moves the folder,
replaces its database row and rewrites its config.json and result.json, in an order that a crash at any point
leaves resumable (running it again finishes the job). A marker file records that `out` is up to date, so later
calls cost one file read.
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
# Where each layout put a run's result.json, relative to `out`.
OLD_LAYOUT = ("runs/*/*/*/result.json", "dense/*/result.json")
LAYOUT = "*/*/*/result.json"


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
    current = run_config(spec.identity(), TrainConfig(**config["train"]), method, settings, config["sparsity"])
    return {**current, "schema": 2}


def upgrade_v2(config: dict) -> dict:
    """The schema-3 config of a schema-2 one: a mask seed that was fixed at 0 is written out unless it equals the
    run's seed (what an unset mask seed now means)."""
    settings = dict(config.get("settings", {}))
    if "random_seed" in get_method(config["method"]).settings.model_fields:
        mask_seed = settings.get("random_seed", 0)  # schema 2's default
        if mask_seed == config["task"].get("seed", 0):
            settings.pop("random_seed", None)
        else:
            settings["random_seed"] = mask_seed
    return {**config, "schema": 3, "settings": settings}


UPGRADES = {1: upgrade_v1, 2: upgrade_v2}


def current_config(config: dict) -> dict:
    """`config` upgraded through every schema after its own."""
    while config.get("schema", 1) != SCHEMA_VERSION:
        version = config.get("schema", 1)
        if version not in UPGRADES:
            raise SmcBenchError(f"run-id schema {version} is newer than this smc-bench ({SCHEMA_VERSION}): upgrade "
                                "smc-bench to read it")
        config = UPGRADES[version](config)
    return config


def run_folder(out: Path, config: dict) -> Path:
    """Where the current layout keeps the run of this (current) config."""
    return out / config["method"] / config["task"]["task"].replace("/", "-") / config_id(config)


def migrate(out: str | Path, say: Callable[[str], None] | None = None) -> int:
    """Move and rename every older run under `out` to its current id and place; returns how many changed."""
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
    found = sorted({p for pattern in (*OLD_LAYOUT, LAYOUT) for p in out.glob(pattern)})
    for result_path in found:
        folder = result_path.parent
        if any(part.startswith(".") for part in folder.relative_to(out).parts):
            continue  # being written, or a checkpoint
        try:
            record = json.loads(result_path.read_text())
            config = record.get("config") or {}
            new_config = current_config(config)
        except (OSError, json.JSONDecodeError, KeyError, TypeError, SmcBenchError) as err:
            problems.append(f"{folder}: {err}")
            continue
        target = run_folder(out, new_config)
        if new_config == config and target == folder:
            continue
        if target != folder:
            if target.exists():
                problems.append(f"{folder}: the same run as {target} under the new ids; left in place")
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            folder.rename(target)
        old_id = record.get("run_id")
        record.update(run_id=config_id(new_config), config=new_config, dir=str(target))
        store.replace(old_id, record)
        write_json(target / "config.json", new_config)
        write_json(target / "result.json", record)
        moved += 1
    for old_root in (out / "runs", out / "checkpoints"):  # layout 1's folders, once empty
        for folder in sorted(old_root.rglob("*"), reverse=True) if old_root.is_dir() else []:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if old_root.is_dir() and not any(old_root.iterdir()):
            old_root.rmdir()
    if moved and say:
        say(f"migrated {moved} run(s) in {out} to run-id schema {SCHEMA_VERSION} (each run at "
            "<method>/<task>/<id>/; the Random methods' mask seed follows the run seed unless set)")
    if problems and say:
        say(f"not migrated ({len(problems)}): " + "; ".join(problems[:3]))
    if not problems:
        write_json(marker, {"schema": SCHEMA_VERSION})
    return moved
