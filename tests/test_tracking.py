"""Optional experiment tracking: a run's config and metrics in MLflow's local store, when asked for."""

import json
from pathlib import Path

import pytest

from helpers import csqa_request
from smcbench.errors import SmcBenchError
from smcbench.runner.single import execute
from smcbench.runner.tracking import check_tracker, flatten, numbers

mlflow = pytest.importorskip("mlflow", reason="MLflow is optional: pip install 'smc-bench[mlflow]'")


def test_each_finished_run_is_logged_to_mlflow_with_its_config_and_metrics(tiny_model_path, data_root, tmp_path,
                                                                           monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    req = csqa_request(tiny_model_path, data_root, tmp_path, "omp_after", [0.2, 0.36])
    req.log = "mlflow"
    records = execute(req)
    client = mlflow.tracking.MlflowClient((tmp_path / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("smc-bench/commonsense/csqa")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3  # the dense fine-tune and both levels
    by_id = {r.data.tags["smcbench.run_id"]: r for r in runs}
    for record in records:
        logged = by_id[record["run_id"]]
        assert logged.info.run_name == f"omp_after@{record['target_sparsity']:.3f}"
        assert logged.data.metrics["accuracy"] == pytest.approx(record["metrics"]["accuracy"])
        assert logged.data.metrics["achieved_sparsity"] == pytest.approx(record["achieved_sparsity"])
        assert logged.data.params["sparsity"] == json.dumps(record["config"]["sparsity"])
        assert logged.data.params["train.lr"] == json.dumps(record["config"]["train"]["lr"])
        assert logged.data.tags["smcbench.dir"] == record["dir"] and Path(record["dir"]).is_dir()
    again = execute(req)  # finished runs are not logged twice
    assert len(client.search_runs([experiment.experiment_id])) == 3 and again == records


def test_trackers_are_checked_before_any_work():
    check_tracker(None)
    with pytest.raises(SmcBenchError, match="log: unknown tracker 'tensorboard': choose mlflow, wandb"):
        check_tracker("tensorboard")


def test_flat_parameters_and_numbers():
    assert flatten({"task": {"task": "x", "seed": 1}, "settings": {"include": ["a"]}, "method": "gmp"}) == {
        "task.task": "x", "task.seed": "1", "settings.include": '["a"]', "method": "gmp"}
    assert numbers({"metrics": {"accuracy": 0.5, "note": "x"}, "achieved_sparsity": 0.2, "steps": 3}) == {
        "accuracy": 0.5, "achieved_sparsity": 0.2, "steps": 3.0}
