"""`smc-bench run`: one task, one method, a list of sparsities, one seed.

Layout under `--out` (one layout for every run, the dense fine-tune included; runner.migrate moves older ones):
  <method>/<task>/<id>/  config.json, result.json, masks.safetensors (bit-packed), model.safetensors (if kept)
  .checkpoints/<id>/     training checkpoints while a run is under way (removed when it finishes)
  results.db             SQLite, one row per finished run (smcbench.runner.store)
`dense/<task>/<id>/` is the dense fine-tune shared by every After method of the same task, model, seed and config.
A run's id is the hash of its identity (runner.identity); a run whose result.json exists is skipped.

Model weights (`--keep-weights`, KEEP_WEIGHTS): `needed` (default) keeps them only where later runs start from them
(the methods that declare `weights_reused`: the dense fine-tune, a chain's latest level); `all` keeps every run's;
`none` drops even those when the command ends. A result stays reproducible from its config, seed and masks, and a
dense fine-tune whose weights are gone is trained again (same config and seed) when a later run needs it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import smcbench
from smcbench import outcomes
from smcbench.errors import SmcBenchError
from smcbench.methods import DENSE, NoSettings, Outcome, SelectionSettings, get_method, method_settings
from smcbench.runner.identity import config_id, run_config
from smcbench.runner.migrate import migrate
from smcbench.runner.store import ResultStore
from smcbench.runner.tracking import check_tracker, log_run
from smcbench.settings import Settings
from smcbench.sparsity import PAPER_GRID, read_masks
from smcbench.sparsity.report import as_records, layer_sparsity, overall_sparsity, relative_change, weight_sparsity
from smcbench.sparsity.selection import select_prunable
from smcbench.tasks import TaskRun, TaskSpec, get_task
from smcbench.tasks.registry import resolve_spec, task_info
from smcbench.training import Callback, TrainConfig, TrainResult, loss_value, train
from smcbench.training.checkpoint import load_model_tensors, model_tensors, write_json


def code_version() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).parent).stdout.strip()
        return f"{smcbench.__version__}+{rev}"
    except (OSError, subprocess.CalledProcessError):
        return smcbench.__version__


@dataclass
class RunRequest:
    """One method on one task. `settings` may be the method's settings or a flat mapping (each method takes the
    keys it declares; a key no method declares is an error) laid over the task's method defaults."""

    spec: TaskSpec
    method: str
    sparsities: list[float]
    train: TrainConfig = field(default_factory=TrainConfig)
    settings: Mapping[str, Any] | Settings = field(default_factory=dict)
    out: Path = Path("runs")
    progress: bool = True
    keep_weights: str = "needed"  # KEEP_WEIGHTS: which runs keep model.safetensors (not part of a run's identity)
    log: str | None = None  # an experiment tracker each finished run is sent to (runner.tracking)

    def __post_init__(self) -> None:
        # The seed lives in one place, the task spec: the training loop's copy always follows it.
        if self.train.seed != self.spec.seed:
            self.train = self.train.model_copy(update={"seed": self.spec.seed})
        if not isinstance(self.settings, Settings):  # the task's defaults (e.g. which tensors it prunes) under them
            self.settings = {**get_task(self.spec).method_defaults(), **self.settings}
        self.settings = method_settings(self.method, self.settings, "settings")
        self.out = Path(self.out)
        check_keep_weights(self.keep_weights)
        check_tracker(self.log)

    def run_config(self, sparsity: float) -> dict:
        return run_config(resolve_spec(self.spec).identity(), self.train, self.method, self.settings, sparsity,
                          task_info(self.spec.task).version, get_method(self.method).version)

    def dense_config(self) -> dict:
        # The method's settings do not change the dense fine-tune.
        return run_config(resolve_spec(self.spec).identity(), self.train, DENSE, NoSettings(), 0.0,
                          task_info(self.spec.task).version, get_method(DENSE).version)


class LocalExperiment:
    """The `Experiment` of smcbench.methods for one task on this machine."""

    def __init__(self, request: RunRequest, task: TaskRun) -> None:
        self.request = request
        self.task = task
        self.settings = request.settings
        self.batch_size = request.train.batch_size
        examples, self.lengths = task.train_examples()
        self.examples = examples
        self.total_steps = request.train.total_steps(len(examples))
        self.seed = request.spec.seed
        self.dense_trainings = 0
        self.current_id: str | None = None
        self.checkpoints: list[Path] = []

    def initial_model(self) -> nn.Module:
        return self.task.initial_model()

    def fine_tune(self, model: nn.Module, callbacks: list[Callback], tag: str, steps: int | None = None):
        # One checkpoint folder per training (LTH trains several per run), removed when its run is written.
        ckpt = self.request.out / CHECKPOINTS / config_id({"run": self.current_id, "tag": tag})
        self.checkpoints.append(ckpt)
        cfg = self.request.train if steps is None else self.request.train.model_copy(update={"max_steps": steps})
        return train(model, self.examples, self.task.collate, cfg, lengths=self.lengths,
                     evaluate=self.task.validate, maximize=self.task.metric.higher_is_better, callbacks=callbacks,
                     checkpoint_dir=ckpt, loss_fn=self.task.loss, progress=self.request.progress, description=tag)

    def untrained(self, model: nn.Module) -> TrainResult:
        model.eval()
        with torch.no_grad():
            metric = float(self.task.validate(model))
        return TrainResult(steps=0, seconds=0.0, examples_seen=0, best_metric=metric, best_step=0)

    def loss(self, model: nn.Module, batch: dict):
        return loss_value(self.task.loss(model, batch))

    def outputs(self, model: nn.Module, batch: dict):
        return self.task.loss(model, batch)

    def score_batches(self, batch_size: int | None = None) -> Iterator[dict]:
        return self.task.score_batches(batch_size or self.batch_size)

    def finished(self, method: str, sparsity: float) -> tuple[nn.Module, dict] | None:
        folder = run_dir(self.request, {**self.request.run_config(sparsity), "method": method})
        if not (folder / "result.json").is_file() or not (folder / WEIGHTS).is_file():
            return None
        model = self.initial_model()
        load_model_tensors(model, load_file(str(folder / "model.safetensors")))
        return model, read_masks(folder / MASKS)

    def source_masks(self, method: str, sparsity: float) -> dict:
        selection = {k: v for k, v in self.settings.identity().items() if k in SelectionSettings.model_fields}
        source = RunRequest(self.request.spec, method, [sparsity], self.request.train, selection, self.request.out,
                            self.request.progress, self.request.keep_weights, self.request.log)
        [record] = execute(source)  # nothing to do when it is finished (a grid runs it first)
        return read_masks(Path(record["dir"]) / MASKS)

    def dense_model(self) -> nn.Module:
        """A fresh copy of the dense fine-tune, trained (by the dense method) the first time only, or again (same
        config and seed) when its weights were not kept; its recorded result then stays as first written."""
        folder = dense_dir(self.request)
        if not (folder / WEIGHTS).is_file():
            saved_id, self.current_id = self.current_id, config_id(self.request.dense_config())
            start = time.perf_counter()
            [outcome] = get_method(DENSE).run(self, [])
            self.dense_trainings += 1
            if (folder / "result.json").is_file():
                save_weights(outcome.model, folder)
                self.drop_checkpoints()
            else:
                record = finish_run(self.request, self, outcome, self.request.dense_config(), folder,
                                    time.perf_counter() - start)
                if record is not None:
                    ResultStore(self.request.out / "results.db").append(record)
                    log_run(self.request.log, record, self.request.out)
            self.current_id = saved_id
        model = self.initial_model()
        load_model_tensors(model, load_file(str(folder / WEIGHTS)))
        return model

    def drop_checkpoints(self) -> None:
        """Remove the checkpoints of the trainings this experiment ran (their run is written)."""
        for ckpt in self.checkpoints:
            shutil.rmtree(ckpt, ignore_errors=True)
        self.checkpoints.clear()


def finish_run(request: RunRequest, exp: LocalExperiment, outcome: Outcome, config: dict, folder: Path,
               wall_s: float) -> dict | None:
    """Evaluate, write artefacts and result.json (last: its presence marks the run finished). Under
    `accelerate launch` only the main process writes; the others return None."""
    from accelerate import PartialState

    evaluating = time.perf_counter()
    metrics, per_example = exp.task.evaluate_outcomes(outcome.model)
    eval_s = time.perf_counter() - evaluating
    if not PartialState().is_main_process:
        return None
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if per_example is not None:  # what the paired verdicts need; the dense run keeps what each example is
        outcomes.write(per_example if get_method(config["method"]).reference else per_example.without_texts(),
                       tmp / outcomes.OUTCOMES)
    if outcome.sparsifier is not None:
        rows = layer_sparsity(outcome.sparsifier.masks)
        outcome.sparsifier.save_masks(tmp / MASKS)
    else:  # the dense model: every Linear and Embedding weight
        rows = weight_sparsity(dict(select_prunable(outcome.model, "all")))
    # The lazy-regime diagnostic, recorded now so that the report needs no model weights: how far training moved
    # each layer from θ0 (the pretrained weights and the seeded head).
    theta0 = dict(exp.initial_model().named_parameters())
    change = relative_change(dict(outcome.model.named_parameters()), theta0, [r.name for r in rows])
    if request.keep_weights == "all" or get_method(config["method"]).weights_reused:
        save_file(model_tensors(outcome.model), str(tmp / WEIGHTS))
    run_id = config_id(config)
    result = outcome.train
    record = {
        "run_id": run_id,
        "task": request.spec.task,
        "model": request.spec.model,
        "fold": request.spec.fold,
        "method": config["method"],
        "target_sparsity": config["sparsity"],
        "achieved_sparsity": overall_sparsity(rows),
        "layers": as_records(rows),
        "versions": {"task": task_info(request.spec.task).version, "method": get_method(config["method"]).version},
        "selection": outcome.sparsifier.selection if outcome.sparsifier is not None else None,
        "model_source": exp.task.provenance(),
        "data": exp.task.run_provenance(),
        "metric": exp.task.metric.to_dict(),
        "metrics": metrics,
        "outcomes": {"kind": per_example.kind, "examples": per_example.count()} if per_example else None,
        "weight_change": change,
        "validation_best": result.best_metric,
        "best_step": result.best_step,
        "steps": result.steps,
        "history": result.history,  # validation metric vs updates and examples: the budget sweeps read it
        "seed": request.spec.seed,
        "train_s": result.seconds,
        "wall_s": wall_s + result.resumed_s,  # training and pruning, without the evaluation; with the training
        # before an interruption (this process measured only what came after it)
        "eval_s": eval_s,
        "examples_per_s": result.examples_per_second,
        "notes": outcome.notes,
        "config": config,
        "code_version": code_version(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(tmp / "config.json", config)
    write_json(tmp / "result.json", {**record, "dir": str(folder)})
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    exp.drop_checkpoints()
    return {**record, "dir": str(folder)}


def resolve(spec: TaskSpec, train_overrides: dict) -> tuple[TaskSpec, TrainConfig]:
    """The task spec with its defaults filled in, and the training config: the loop's defaults, under the task's
    (e.g. GTS's learning rates and StepLR), under what the user set; its seed is the spec's."""
    spec = resolve_spec(spec)
    return spec, TrainConfig(**{**get_task(spec).train_defaults(), **train_overrides, "seed": spec.seed})


def kept_groups_note(spec: TaskSpec, train_overrides: dict) -> str:
    """A line to show when the user set `lr` but not `lr_groups` while the task's defaults have groups: those
    parameters keep the task's rates (ESM's backbone 1e-6: a run at `lr` 5e-4 trains little more than the head),
    which is right for GTS's embedder and a trap elsewhere, so it is said, never silent. "" otherwise."""
    if "lr" not in train_overrides or "lr_groups" in train_overrides:
        return ""
    groups = get_task(spec).train_defaults().get("lr_groups") or ()
    if not groups:
        return ""
    listed = ", ".join(f"'{pattern}' at {lr:g}" for pattern, lr in groups)
    return (f"{spec.task} ({spec.model}): lr {train_overrides['lr']:g} trains the parameters outside the task's own "
            f"learning-rate groups, which keep theirs ({listed}); to change them give lr_groups (--lr-group "
            "REGEX=LR; `lr_groups: {}` in a grid spec for none)")


WEIGHTS = "model.safetensors"
MASKS = "masks.safetensors"
CHECKPOINTS = ".checkpoints"  # hidden: never taken for a finished run
KEEP_WEIGHTS = ("needed", "all", "none")


def check_keep_weights(policy: str, where: str = "keep_weights") -> None:
    if policy not in KEEP_WEIGHTS:
        raise SmcBenchError(f"{where}: unknown policy {policy!r}: choose {', '.join(KEEP_WEIGHTS)}")


def save_weights(model: nn.Module, folder: Path) -> None:
    tmp = folder / f".{WEIGHTS}.tmp"
    save_file(model_tensors(model), str(tmp))
    tmp.rename(folder / WEIGHTS)


def drop_weights(folders: list[Path]) -> int:
    """Delete the model weights in these run folders; returns the bytes freed."""
    freed = 0
    for folder in folders:
        path = folder / WEIGHTS
        if path.is_file():
            freed += path.stat().st_size
            path.unlink()
    return freed


def run_dir(request: RunRequest, config: dict) -> Path:
    return request.out / config["method"] / request.spec.task.replace("/", "-") / config_id(config)


def dense_dir(request: RunRequest) -> Path:
    return run_dir(request, request.dense_config())


def execute(request: RunRequest) -> list[dict]:
    """Run what is missing; return the record of every requested run (finished now or before)."""
    migrate(request.out)  # runs written under an older identity schema are found under their new ids
    request.spec = resolve_spec(request.spec)
    method = get_method(request.method)
    task = get_task(request.spec)
    if method.reference:
        done = dense_dir(request) / "result.json"
        if not done.is_file():
            LocalExperiment(request, task).dense_model()
        if request.keep_weights == "none":
            drop_weights([done.parent])
        return [json.loads(done.read_text())]
    # The paper's grid by default (1 − 0.8^k, k = 1..10); the levels the method reaches (fails before any training
    # when one is out of reach).
    request.sparsities = method.levels(request.sparsities or list(PAPER_GRID), request.settings)
    done = {s: run_dir(request, request.run_config(s)) / "result.json" for s in request.sparsities}
    pending = [s for s in request.sparsities if not done[s].is_file()]
    uses_dense = method.uses_dense(request.settings)
    if pending:
        exp = LocalExperiment(request, task)
        if uses_dense:
            exp.dense_model()  # trained once, before any sparse run starts (the After methods' start, kd's teacher)
        store = ResultStore(request.out / "results.db")
        # A chained method reaches every level on the way to the highest: one chain. A method that shares work
        # between levels gets them all at once.
        groups = [[max(pending)]] if method.chained else [pending] if method.shares_levels else [[s] for s in pending]
        for group in groups:
            exp.current_id = config_id(request.run_config(max(group)))
            started = time.perf_counter()
            for outcome in method.run(exp, group):
                config = request.run_config(outcome.sparsity)
                folder = run_dir(request, config)
                if not (folder / "result.json").is_file():
                    record = finish_run(request, exp, outcome, config, folder, time.perf_counter() - started)
                    if record is not None:
                        store.append(record)
                        log_run(request.log, record, request.out)
                chain = method.chain(outcome.sparsity)
                if method.chained and len(chain) > 1 and (folder / WEIGHTS).is_file() and request.keep_weights != "all":
                    # The chain goes on from this level's weights: the level before it is no longer needed.
                    drop_weights([run_dir(request, request.run_config(chain[-2]))])
                started = time.perf_counter()
        if request.keep_weights == "none":  # what this command needed is done
            drop_weights([*(p.parent for p in done.values()), *([dense_dir(request)] if uses_dense else [])])
    return [json.loads(p.read_text()) for p in done.values()]
