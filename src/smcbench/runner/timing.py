"""What a grid will take, before it runs (`smc-bench grid --dry-run`): each run's seconds, predicted from measured
costs, best source first:

1. finished runs of the same kind in the output folder: the median recorded time (training, pruning and
   evaluation) of the runs with the same task configuration (but seed and fold), training settings, method and
   method settings (any level). This is what
   this machine took for exactly this kind of run.
2. a probe of the task configuration on this machine, cached per machine in $SMCBENCH_CACHE/costs.json: a few real
   updates of the task's model through the training loop (seconds per update), one validation, one full
   evaluation and one no-grad forward pass of a training batch, timed, and the shape of that pass (how many input
   groups its Linear layers form, whether each is called once). A run then takes `trainings × (updates × seconds
   per update × step cost + validations × validation seconds) + evaluation seconds`, with the method's
   `trainings` and `step_cost` (methods.base).

A method with large extra passes declares them: in updates (`Method.extra_updates`: oBERT's gradients and
Fisher) or in forward passes (`Method.extra_forwards`: SparseGPT's and Wanda's layer-wise calibration). What a
probe does not see: small extra passes (SNIP's gradients, SparseGPT's per-layer solve) and an untrained model
generating longer than a trained one (translation); the finished runs correct both as they come in.

The check: before a grid runs, each node's prediction is appended to OUT/predictions.jsonl (`save_predictions`);
when it ends the grid prints the predicted against the taken time of what ran, and the report sets every run's
record against its prediction (`against_runs`).
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

from smcbench.cache import cache_dir
from smcbench.errors import SmcBenchError
from smcbench.methods import ForwardShape, get_method
from smcbench.pretraining import no_pretraining
from smcbench.runner.grid import Node
from smcbench.runner.identity import config_id
from smcbench.runner.store import ResultStore
from smcbench.sparsity.calibration import called_once, input_groups, linear_layers
from smcbench.tasks import TaskSpec, get_task
from smcbench.training import Callback, LoopState, TrainConfig, train

WARMUP_UPDATES = 2  # not timed: first-call allocations and lazy initialisation
PROBE_UPDATES = 8


@dataclass(frozen=True)
class Probe:
    update_s: float  # one optimizer update at the task's batch size
    validate_s: float  # one validation pass
    evaluate_s: float  # one full evaluation (with the per-example outcomes)
    train_examples: int  # the training pool the schedule's updates are counted from
    # One no-grad forward pass (the loss) of a training batch, and the shape of that pass (Method.extra_forwards).
    # None in probes cached by older versions, which are measured again.
    forward_s: float | None = None
    linear_groups: int = 0
    linear_once: bool = True


@dataclass(frozen=True)
class Estimate:
    seconds: float
    source: str  # "runs" (finished runs of this kind) or "probe"


class _Clock(Callback):
    """Times updates after the warm-up, and the validation pass."""

    def __init__(self) -> None:
        self.marks: dict[int, float] = {}
        self.validation = 0.0

    def on_step_end(self, state: LoopState) -> None:
        self.marks[state.step] = time.perf_counter()

    def on_evaluate_begin(self, state: LoopState) -> None:
        self.validation = -time.perf_counter()

    def on_evaluate_end(self, state: LoopState) -> None:
        self.validation += time.perf_counter()


def _probe_key(spec: TaskSpec, cfg: TrainConfig) -> str:
    task = {k: v for k, v in spec.identity().items() if k not in ("seed", "fold")}
    what = {"task": task, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "host": platform.node(),
            "threads": torch.get_num_threads(), "torch": torch.__version__}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def measure(spec: TaskSpec, cfg: TrainConfig) -> Probe:
    """Time the task's real training loop for a few updates, one validation and one evaluation."""
    task = get_task(spec)
    examples, lengths = task.train_examples()
    model = task.initial_model()
    clock = _Clock()
    probe_cfg = cfg.model_copy(update={"max_steps": WARMUP_UPDATES + PROBE_UPDATES, "eval_every": None,
                                       "eval_epochs": None})
    train(model, examples, task.collate, probe_cfg, lengths=lengths, evaluate=task.validate,
          maximize=task.metric.higher_is_better, callbacks=[clock], loss_fn=task.loss, progress=False)
    update_s = (clock.marks[WARMUP_UPDATES + PROBE_UPDATES] - clock.marks[WARMUP_UPDATES]) / PROBE_UPDATES
    start = time.perf_counter()
    task.evaluate_outcomes(model.eval())
    evaluate_s = time.perf_counter() - start
    forward_s, shape = _forward(task, model, cfg.batch_size)
    return Probe(update_s, clock.validation, evaluate_s, len(examples), forward_s, shape.linear_groups,
                 shape.linear_once)


def _forward(task, model: nn.Module, batch_size: int) -> tuple[float, ForwardShape]:
    """Seconds of one no-grad forward pass (the loss, as calibration runs it) over a training batch, after one
    untimed; the input groups of the model's Linear layers and whether each is called once per pass."""
    batch = next(iter(task.score_batches(batch_size)))
    params = {f"{name}.weight" if name else "weight": m.weight for name, m in model.named_modules()
              if isinstance(m, nn.Linear)}
    layers = linear_layers(model, params)

    def forward(b):
        return task.loss(model, b)

    groups = input_groups(layers, forward, batch)  # (also the untimed first pass)
    once = called_once(layers, forward, [batch])
    with torch.no_grad():
        start = time.perf_counter()
        forward(batch)
        seconds = time.perf_counter() - start
    return seconds, ForwardShape(len(groups), all(n in once for g in groups for n in g))


def probes_file() -> Path:
    return cache_dir() / "costs.json"


def cached_probe(spec: TaskSpec, cfg: TrainConfig, say=print, measure_missing: bool = True) -> Probe | None:
    """The task configuration's probe on this machine: measured once, then read from the cache (None: not
    cached and not to be measured)."""
    path = probes_file()
    cache = json.loads(path.read_text()) if path.is_file() else {}
    key = _probe_key(spec, cfg)
    stale = key in cache and cache[key].get("forward_s") is None  # cached by an older version
    if key not in cache or (stale and measure_missing):
        if not measure_missing:
            return None
        say(f"measuring {spec.task} ({spec.model}, batch {cfg.batch_size}) on this machine: once, cached in {path}")
        cache[key] = asdict(measure(spec, cfg))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(path)
    return Probe(**cache[key])


def _kind(config: dict) -> str:
    """A run's kind: its configuration but the level, seed and fold (what its cost does not depend on)."""
    task = {k: v for k, v in config["task"].items() if k not in ("seed", "fold")}
    train = {k: v for k, v in config["train"].items() if k != "seed"}
    rest = {k: v for k, v in config.items() if k not in ("sparsity", "task", "train")}
    return json.dumps({**rest, "task": task, "train": train}, sort_keys=True)


def _finished(outs: set[Path]) -> dict[str, float]:
    """Median wall seconds per run kind among the finished runs in these output folders."""
    times: dict[str, list[float]] = {}
    for out in outs:
        if (out / "results.db").is_file():
            for r in ResultStore(out / "results.db").records():
                if r.get("wall_s") and r.get("config"):  # (older records lack eval_s)
                    times.setdefault(_kind(r["config"]), []).append(float(r["wall_s"]) + float(r.get("eval_s") or 0))
    return {k: statistics.median(v) for k, v in times.items()}


def _from_probe(node: Node, probe: Probe) -> float:
    r = node.request
    method = get_method(r.method)
    cfg = r.train
    updates = cfg.total_steps(probe.train_examples)
    interval = cfg.validation_interval(probe.train_examples)
    validations = math.ceil(updates / interval) if interval else 1
    trainings = method.trainings(r.settings)
    one = trainings * (updates * probe.update_s * method.step_cost + validations * probe.validate_s)
    one += method.extra_updates(r.settings, updates, cfg.batch_size) * probe.update_s
    if probe.forward_s is not None:
        one += method.extra_forwards(r.settings, ForwardShape(probe.linear_groups, probe.linear_once)) * probe.forward_s
    if not trainings:
        one += probe.validate_s  # the model used as it is is still validated once
    return (one + probe.evaluate_s) * len(node.configs())


def predict(nodes: list[Node], say=print, measure_missing: bool = True) -> dict[str, Estimate]:
    """Node id → its predicted seconds and where the figure comes from (finished nodes take 0). A task
    configuration without a cached probe is probed now (`measure_missing`), else its runs are unknown (NaN), as
    are those of a model that cannot be built here (a hub model offline)."""
    finished = _finished({n.request.out for n in nodes})
    out, failed = {}, set()
    for node in nodes:
        if node.done():
            out[node.id] = Estimate(0.0, "runs")
            continue
        known = [finished.get(_kind(c)) for c in node.configs()]
        if all(k is not None for k in known):
            out[node.id] = Estimate(sum(known), "runs")
            continue
        r = node.request
        key = _probe_key(r.spec, r.train)
        probe = None
        if key not in failed:  # a configuration that cannot be probed is tried and told once, not once per run
            try:
                with no_pretraining():  # a dry run trains nothing: a model still to pretrain leaves its time unknown
                    probe = cached_probe(r.spec, r.train, say, measure_missing)
            except (SmcBenchError, OSError) as err:
                failed.add(key)
                say(f"no time estimate for {r.spec.task} ({r.spec.model}): {str(err).splitlines()[0][:240]}")
        out[node.id] = Estimate(math.nan, "unknown") if probe is None else Estimate(_from_probe(node, probe), "probe")
    return out


def human_time(seconds: float) -> str:
    if math.isnan(seconds):
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


PREDICTIONS = "predictions.jsonl"  # in a grid's output folder: what was predicted for each node before it ran


def save_predictions(nodes: list[Node], estimates: dict[str, Estimate]) -> None:
    """Append each node still to run, with its prediction, to its output folder's predictions.jsonl."""
    at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines: dict[Path, list[str]] = defaultdict(list)
    for node in nodes:
        if node.done():
            continue
        e = estimates[node.id]
        lines[node.request.out].append(json.dumps({
            "node": node.id, "label": node.label, "runs": [config_id(c) for c in node.configs()],
            "predicted_s": None if math.isnan(e.seconds) else e.seconds, "source": e.source, "at": at}))
    for out, rows in lines.items():
        out.mkdir(parents=True, exist_ok=True)
        with open(out / PREDICTIONS, "a") as f:
            f.write("".join(row + "\n" for row in rows))


def against_runs(out: Path, records: list[dict], since: str | None = None) -> list[dict]:
    """Each node predicted in `out` (its latest prediction, made at or after `since`) whose runs have all finished:
    {label, task, method, runs, source, predicted_s, took_s}, took = the runs' recorded training and evaluation time."""
    path = out / PREDICTIONS
    if not path.is_file():
        return []
    latest = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.get("predicted_s") is not None and (since is None or row["at"] >= since):
            latest[row["node"]] = row
    by_id = {r["run_id"]: r for r in records if r.get("wall_s") is not None}
    out_rows = []
    for row in latest.values():
        runs = [by_id.get(i) for i in row["runs"]]
        if runs and all(runs):
            took = sum(float(r["wall_s"]) + float(r.get("eval_s") or 0) for r in runs)
            out_rows.append({"label": row["label"], "task": runs[0]["task"], "method": runs[0]["method"],
                             "runs": len(runs), "source": row["source"], "predicted_s": row["predicted_s"],
                             "took_s": took})
    return out_rows
