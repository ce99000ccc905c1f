"""Run identity: a schema version plus only the settings that matter, defaults left out; runs finished under the
first schema are migrated once and found again."""

import json
import shutil

import pytest
from pydantic import Field

from smcbench.methods import get_method
from smcbench.methods.paper import GMPSettings
from smcbench.runner.identity import SCHEMA_VERSION, config_id
from smcbench.runner.migrate import MARKER, migrate
from smcbench.runner.single import RunRequest, execute
from smcbench.runner.store import ResultStore
from smcbench.tasks import TaskSpec
from smcbench.training import TrainConfig


def test_identity_leaves_defaults_out():
    cfg = TrainConfig(lr=1e-3, batch_size=4)
    assert cfg.identity() == {"lr": 1e-3, "batch_size": 4}
    assert TrainConfig(lr=1e-3, batch_size=4, cycle_div_factor=25.0).identity() == cfg.identity()
    assert GMPSettings(interval=5).identity() == {"interval": 5}


def test_adding_a_setting_with_a_default_keeps_every_run_id(tiny_model_path, data_root, tmp_path, monkeypatch):
    req = RunRequest(TaskSpec("commonsense/csqa", tiny_model_path, str(data_root), train_size=8),
                     "gmp", [0.5], TrainConfig(lr=1e-3), {"interval": 2}, tmp_path)
    before = config_id(req.run_config(0.5)), config_id(req.dense_config())

    # A later version adds a GMP setting and a training setting, each with a default.
    class NewGMPSettings(GMPSettings):
        gmp_score: str = Field("magnitude")

    class NewTrainConfig(TrainConfig):
        label_smoothing: float = 0.0

    monkeypatch.setattr(type(get_method("gmp")), "settings", NewGMPSettings)
    later = RunRequest(req.spec, "gmp", [0.5], NewTrainConfig(lr=1e-3), {"interval": 2}, tmp_path)
    assert (config_id(later.run_config(0.5)), config_id(later.dense_config())) == before
    # Setting the new field does change it.
    changed = RunRequest(req.spec, "gmp", [0.5], NewTrainConfig(lr=1e-3, label_smoothing=0.1),
                         {"interval": 2, "gmp_score": "snip"}, tmp_path)
    assert config_id(changed.run_config(0.5)) != before[0]
    assert req.run_config(0.5)["schema"] == SCHEMA_VERSION


def schema1_config(config: dict) -> dict:
    """What the first schema hashed for the same run: every field of every group (the code before 0.2)."""
    task = {"task": None, "model": None, "train_size": None, "val_size": 200, "eval_size": None,
            "max_length": 128, "train_variant": None, "seed": 0, "fold": None}
    task.update({k: v for k, v in config["task"].items() if k != "options"})
    task["train_variant"] = config["task"].get("options", {}).get("train_variant")
    train = {"lr": 5e-5, "weight_decay": 0.01, "warmup_ratio": 0.0, "batch_size": 8, "grad_accum": 1, "epochs": 1.0,
             "max_steps": None, "eval_every": None, "eval_epochs": None, "max_grad_norm": 1.0, "seed": 0,
             "bucket_by_length": True, "lr_groups": [], "schedule": "linear", "step_epochs": 20.0,
             "step_gamma": 0.5}
    train.update(config["train"])
    out = {"task": task, "train": train, "method": config["method"], "sparsity": config["sparsity"]}
    if config["method"] != "dense":
        out["settings"] = {"preset": "all", "interval": None, "gmp_start": 0.1, "gmp_end": 0.8, "rigl_alpha": 0.3,
                           "rigl_end": 0.75, "snip_batches": 8, "random_seed": 0, **config["settings"]}
    return out


def to_schema1(store, record):
    """Rewrite a finished run as the first schema left it: folder named by the old id, old config, old row."""
    from pathlib import Path

    old = schema1_config(record["config"])
    folder = Path(record["dir"])
    target = folder.with_name(config_id(old))
    shutil.move(folder, target)
    current_id = record["run_id"]
    record = {**record, "run_id": config_id(old), "config": old, "dir": str(target)}
    for key in ("metric", "weight_change"):
        record.pop(key)
    record["metrics"]["chance"] = 0.2
    (target / "config.json").write_text(json.dumps(old))
    (target / "result.json").write_text(json.dumps(record))
    store.replace(current_id, record)
    return target


def test_runs_of_the_first_schema_are_migrated_once_and_found(tiny_model_path, data_root, tmp_path):
    def req(method, levels):
        return RunRequest(TaskSpec("commonsense/winogrande", tiny_model_path, str(data_root), train_size=12,
                                   val_size=4, eval_size=4, max_length=32, options={"train_variant": "xs"}),
                          method, levels, TrainConfig(lr=1e-3, batch_size=4, max_steps=2), {}, tmp_path,
                          progress=False)

    records = execute(req("omp_after", [0.2]))
    dense = json.loads(next((tmp_path / "dense").glob("*/*/result.json")).read_text())
    new_ids = {dense["run_id"], records[0]["run_id"]}
    store = ResultStore(tmp_path / "results.db")
    old_dirs = [to_schema1(store, r) for r in (dense, records[0])]
    assert {r["run_id"] for r in store.records()}.isdisjoint(new_ids)
    (tmp_path / MARKER).unlink()

    said = []
    assert migrate(tmp_path, said.append) == 2
    assert "migrated 2 run(s)" in said[0]
    assert {r["run_id"] for r in store.records()} == new_ids
    assert not any(d.exists() for d in old_dirs)
    assert migrate(tmp_path) == 0  # once: the marker says the folder is current
    again = execute(req("omp_after", [0.2]))  # found: nothing is trained again
    assert again[0]["run_id"] == records[0]["run_id"] and len(store.records()) == 2
    assert again[0]["metrics"] == records[0]["metrics"]


def test_a_first_schema_config_of_the_paper_preset_maps_to_the_current_id():
    # The conversion itself, on the paper's CSQA setting (no data needed).
    spec = TaskSpec("commonsense/csqa", "roberta-large", max_length=128, seed=1)
    train = TrainConfig(lr=1e-5, batch_size=16, max_steps=3000, warmup_ratio=0.05, eval_every=500)
    req = RunRequest(spec, "snip_rigl", [0.36], train, {"interval": 500}, "unused")
    from smcbench.runner.migrate import current_config

    current = req.run_config(0.36)
    assert current_config(schema1_config(current)) == current
    assert current["settings"] == {"interval": 500}


@pytest.mark.parametrize("method", ["omp_after", "lth", "gmp", "snip", "random_rigl"])
def test_every_method_hashes_only_its_own_settings(method):
    spec = TaskSpec("commonsense/csqa", "minilm")
    shared = {"interval": 7, "rigl_alpha": 0.5, "snip_batches": 3, "random_seed": 4, "gmp_end": 0.7}
    settings = RunRequest(spec, method, [0.5], TrainConfig(), shared, "unused").run_config(0.5)["settings"]
    assert set(settings) == set(get_method(method).settings.user_fields()) & set(shared)
