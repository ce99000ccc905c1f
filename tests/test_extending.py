"""A method and a task added in this module only (no change anywhere else), run through the runner, the grid and
the report: the extension points the README's "Extending smc-bench" describes."""

import sqlite3
from typing import Literal

import pytest
import torch
from pydantic import Field
from torch import nn

from smcbench.methods import METHODS, Method, Outcome, SelectionSettings, register_method
from smcbench.methods.callbacks import MaskEnforcer
from smcbench.metrics import Metric
from smcbench.report.render import build
from smcbench.runner.grid import expand, run_local
from smcbench.runner.single import RunRequest, execute
from smcbench.runner.spec import GridSpec
from smcbench.tasks import TaskRun, TaskSpec, register_task
from smcbench.tasks.registry import known_tasks
from smcbench.training import TrainConfig, batched_outputs

# --- a task whose metric is lower-is-better --------------------------------------------------------------------


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        pred = self.body(x).squeeze(-1)
        loss = None if y is None else (pred - y).pow(2).mean()
        return type("Out", (), {"loss": loss, "pred": pred})()


def _data(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    y = torch.sin(x[:, 0]) + x[:, 1] * x[:, 2]
    return [(x[i], y[i]) for i in range(n)]


def collate(rows):
    return {"x": torch.stack([r[0] for r in rows]), "y": torch.stack([r[1] for r in rows])}


class RegressionRun(TaskRun):
    name = "toy/regression"
    metric = Metric("mse", higher_is_better=False, secondary=("mae",), tolerance=0.01,
                    secondary_lower_is_better=("mae",))

    def initial_model(self) -> nn.Module:
        torch.manual_seed(self.spec.seed)
        return Net()

    def train_examples(self):
        rows = _data(self.spec.train_size or 96, 0)
        return rows, [1] * len(rows)

    def collate(self, rows):
        return collate(rows)

    def _errors(self, model: nn.Module, rows) -> tuple[float, float]:
        errors = batched_outputs(model, rows, self.collate, lambda m, b: m(b["x"]).pred - b["y"], length=lambda r: 1)
        e = torch.stack(errors)
        return float(e.pow(2).mean()), float(e.abs().mean())

    def validate(self, model: nn.Module) -> float:
        return self._errors(model, _data(32, 1))[0]

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        mse, mae = self._errors(model, _data(64, 2))
        return {"mse": mse, "mae": mae, "eval_examples": 64}


@pytest.fixture(autouse=True)
def toy_extensions():
    """Register the toy task and method for this module's tests only (other modules iterate the registries)."""
    from smcbench.tasks import registry

    register_task("toy/regression", default_model="mlp")(RegressionRun)
    register_method(LayerwiseMagnitude)
    yield
    METHODS.pop(LayerwiseMagnitude.name)
    registry._TASKS.pop("toy/regression")
    registry._INFO.pop("toy/regression")


# --- a method with its own settings ------------------------------------------------------------------------------


class LayerwiseSettings(SelectionSettings):
    allocation: Literal["uniform", "erk"] = Field("uniform", description="How the sparsity is spread over layers.")


class LayerwiseMagnitude(Method):
    """Magnitude pruning of θ0 with a per-layer allocation, then fine-tuning."""

    name = "layerwise_magnitude"
    settings = LayerwiseSettings
    summary = "magnitude on θ0, uniform or ERK per layer, fine-tune"

    def run(self, exp, sparsities):
        for s in sparsities:
            model = exp.initial_model()
            sp = exp.settings.sparsifier(model)
            sp.prune(s, "magnitude", exp.settings.allocation)
            yield Outcome(s, model, sp, exp.fine_tune(model, [MaskEnforcer(sp)], f"layerwise@{s}"))


def request(tmp_path, method, sparsities, **settings):
    return RunRequest(TaskSpec("toy/regression"), method, sparsities,
                      TrainConfig(lr=1e-2, batch_size=16, max_steps=30, eval_every=10), settings, tmp_path,
                      progress=False)


def test_a_toy_task_with_a_lower_is_better_metric_runs_selects_and_reports(tmp_path):
    assert "toy/regression" in known_tasks()
    [dense] = execute(request(tmp_path, "dense", []))
    assert dense["metric"] == {"name": "mse", "higher_is_better": False, "chance": None, "secondary": ["mae"],
                               "breakdown": [], "tolerance": 0.01, "secondary_lower_is_better": ["mae"],
                               "baselines": []}
    assert dense["metrics"]["mse"] < 1.0 and dense["validation_best"] is not None
    # The output layer stays dense (a regex on the selection), or global magnitude empties it.
    records = execute(request(tmp_path, "omp_after", [0.5, 0.98], exclude=[r"^body\.2\."]))
    assert [r["layers"][0]["name"] for r in records] == ["body.0.weight"] * 2 and len(records[0]["layers"]) == 1
    assert records[1]["metrics"]["mse"] > records[0]["metrics"]["mse"]  # 98 % hurts more
    with sqlite3.connect(tmp_path / "results.db") as conn:
        row = conn.execute("SELECT metric_name, metric FROM runs WHERE method = 'dense'").fetchone()
    assert row == ("mse", dense["metrics"]["mse"])
    build(tmp_path / "results.db", tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Mse: toy/regression / mlp" in md and "lower is better" in md and "no chance level" in md
    assert "## mae: toy/regression / mlp" in md  # the secondary metric's own table, dense included
    # A larger error is worse: both levels lose more than the tolerance (0.01 with one seed) to dense.
    assert records[0]["metrics"]["mse"] > dense["metrics"]["mse"] + 0.01
    assert "| omp_after | - | 0.500 |" in md


def test_loop_selects_the_lowest_metric_when_lower_is_better():
    from smcbench.training import train

    model = Net()
    scores = iter([0.5, 0.1, 0.3])
    cfg = TrainConfig(lr=1e-2, batch_size=16, max_steps=6, eval_every=2)
    result = train(model, _data(48, 0), collate, cfg, evaluate=lambda m: next(scores), maximize=False,
                   progress=False)
    assert result.best_step == 4 and result.best_metric == 0.1


def test_a_toy_method_with_its_own_setting_runs_in_run_grid_and_report(tmp_path):
    assert "layerwise_magnitude" in METHODS
    [uniform] = execute(request(tmp_path, "layerwise_magnitude", [0.5]))
    [erk] = execute(request(tmp_path, "layerwise_magnitude", [0.5], allocation="erk"))
    assert uniform["run_id"] != erk["run_id"] and erk["config"]["settings"] == {"allocation": "erk"}
    assert all(layer["sparsity"] == pytest.approx(0.5, abs=0.02) for layer in uniform["layers"])
    assert len({round(layer["sparsity"], 2) for layer in erk["layers"]}) > 1  # ERK spreads it unevenly
    # The same method in a grid: its shared setting, no dense node (it does not need one), ids shared with `run`.
    spec = GridSpec(tasks=[{"task": "toy/regression"}], models=["mlp"], methods=["layerwise_magnitude"],
                    sparsities=[0.5], train={"lr": 1e-2, "batch_size": 16, "max_steps": 30, "eval_every": 10},
                    settings={"allocation": "erk"}, out=str(tmp_path))
    [node] = expand(spec)
    assert node.id == erk["run_id"] and run_local([node]) == {node.id: "done"}
    build(tmp_path / "results.db", tmp_path / "report")
    assert "layerwise_magnitude" in (tmp_path / "report" / "report.md").read_text()


def test_a_setting_no_method_declares_is_an_error_and_a_foreign_one_is_ignored(tmp_path):
    from smcbench.errors import SmcBenchError

    with pytest.raises(SmcBenchError, match="unknown setting"):
        request(tmp_path, "omp_after", [0.5], alocation="erk")
    # rigl_alpha belongs to other methods: it is not part of omp_after's settings, so not of its id.
    plain = request(tmp_path, "omp_after", [0.5])
    foreign = request(tmp_path, "omp_after", [0.5], rigl_alpha=0.9)
    assert plain.run_config(0.5) == foreign.run_config(0.5)
