"""A run's identity: the hash of a schema version plus only the settings that matter to that method and task, each
group without its defaults (settings.Settings.identity). Adding a setting with a default therefore never changes an
existing run's id; giving a method a setting it does not declare is impossible (its schema has no such field).

Tasks and methods carry a version (lm-evaluation-harness versions its tasks the same way), bumped when their
behaviour changes: a version other than 1 enters the id, so a run made before the change is never taken for one
made after it, and runs of version 1 keep the ids they had.

Schema 1 (before 0.2) hashed every field of every group; schema 2 fixed the Random methods' mask seed at 0 where
schema 3 lets it follow the run's seed. runner.migrate renames older runs once.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from smcbench.settings import Settings

SCHEMA_VERSION = 3


def config_id(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def run_config(task: dict[str, Any], train: Settings, method: str, settings: Settings, sparsity: float,
               task_version: int = 1, method_version: int = 1) -> dict:
    """What a run's id hashes. `task` is the resolved TaskSpec's identity; versions other than 1 are part of it."""
    config = {"schema": SCHEMA_VERSION, "task": task, "train": train.identity(), "method": method,
              "sparsity": round(sparsity, 6), "settings": settings.identity()}
    if task_version != 1:
        config["task_version"] = task_version
    if method_version != 1:
        config["method_version"] = method_version
    return config
