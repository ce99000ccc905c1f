"""`smc-bench bench arithmetic`: GTS training and evaluation speed per epoch, ours beside the public GTS code.

Ours: the arithmetic task's model and loop on one fold, timing each epoch's training and, apart from it, a beam
search over the evaluation fold after every epoch (the public code reports that accuracy per epoch; in the benchmark
protocol model selection uses the validation split instead, see the task). With `--official DIR` (SVAMP's
`code/gts`, its `data/<dataset>` pointing at the same fold, runnable by `--official-python`), the public code runs
first in its own process with the same settings and its log's per-epoch times are parsed, so the ratios come from
one run on one machine.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import torch

from smcbench.errors import SmcBenchError
from smcbench.training.callbacks import Callback, LoopState


class _EpochClock(Callback):
    """After each epoch: the epoch's training time, then (untimed for training) accuracy on the evaluation fold."""

    def __init__(self, per_epoch: int, evaluate) -> None:
        self.per_epoch, self.evaluate = per_epoch, evaluate
        self.epochs: list[dict] = []
        self.mark = time.perf_counter()

    def on_train_begin(self, state: LoopState) -> None:
        self.mark = time.perf_counter()

    def on_step_end(self, state: LoopState) -> None:
        if state.step % self.per_epoch:
            return
        train_s = time.perf_counter() - self.mark
        start = time.perf_counter()
        metrics = self.evaluate(state.model)
        eval_s = time.perf_counter() - start
        self.epochs.append({"epoch": state.step // self.per_epoch, "train_s": train_s, "eval_s": eval_s,
                            "accuracy": metrics["accuracy"], "equation_accuracy": metrics["equation_accuracy"]})
        state.model.train()
        self.mark = time.perf_counter()


def run_ours(task: str, fold: int, model: str, epochs: int, batch_size: int, lr: float, data_dir: str | None,
             seed: int = 0) -> list[dict]:
    from smcbench.runner.single import resolve
    from smcbench.tasks import TaskSpec, get_task
    from smcbench.training import train

    # val_size 1: train on (nearly) the whole training file, as the public code does.
    spec, cfg = resolve(TaskSpec(task, model, data_dir, val_size=1, seed=seed, fold=fold),
                        {"epochs": float(epochs), "batch_size": batch_size, "lr": lr, "eval_epochs": None,
                         "seed": seed})
    run = get_task(spec)
    examples, lengths = run.train_examples()
    net = run.initial_model()
    clock = _EpochClock(cfg.updates_per_epoch(len(examples)), run.evaluate)
    train(net, examples, run.collate, cfg, lengths=lengths, callbacks=[clock], loss_fn=run.loss, progress=False)
    return clock.epochs


def _seconds(text: str) -> float:
    h, m, s = (int(x) for x in re.match(r"(\d+)h (\d+)m (\d+)s", text).groups())
    return 3600 * h + 60 * m + s


def run_official(folder: Path, python: str, dataset: str, epochs: int, batch_size: int, lr: float,
                 hidden: int = 512) -> list[dict]:
    """The public GTS code, `-embedding random` (offline), its log parsed: per epoch the training time, the
    validation time and the value accuracy it reports on the evaluation fold."""
    cmd = [python, "-m", "src.main", "-mode", "train", "-embedding", "random", "-dataset", dataset, "-no-full_cv",
           "-epochs", str(epochs), "-batch_size", str(batch_size), "-lr", str(lr), "-hidden_size", str(hidden),
           "-gpu", "0", "-no-save_model", "-no-outputs", "-no-show_train_acc", "-run_name", "smcbench_bench"]
    out = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, check=False)
    log = out.stdout + out.stderr
    if out.returncode != 0:
        tail = log.strip().splitlines()[-1] if log.strip() else "no output"
        raise SmcBenchError(f"the public GTS code failed in {folder} (exit {out.returncode}): {tail}")
    times = [_seconds(t) for t in re.findall(r"Time Taken: (\d+h \d+m \d+s)", log)]
    accs = [float(a) for a in re.findall(r"val acc epoch: ([0-9.]+)", log)]
    return [{"epoch": k + 1, "train_s": times[2 * k], "eval_s": times[2 * k + 1], "accuracy": accs[k]}
            for k in range(min(len(accs), len(times) // 2))]


def run(task: str = "arithmetic/mawps", fold: int = 0, model: str = "gts:random", epochs: int = 3,
        batch_size: int = 4, lr: float = 8e-4, data_dir: str | None = None, official: str | None = None,
        official_python: str = "python", official_dataset: str = "mawps_fold0") -> dict:
    torch.manual_seed(0)
    result: dict = {"settings": {"task": task, "fold": fold, "model": model, "epochs": epochs,
                                 "batch_size": batch_size, "lr": lr}}
    if official:
        result["official"] = run_official(Path(official), official_python, official_dataset, epochs, batch_size, lr)
    result["ours"] = run_ours(task, fold, model, epochs, batch_size, lr, data_dir)
    if official and result["official"]:
        def mean(rows, key):
            return sum(r[key] for r in rows) / len(rows)

        result["train_speedup"] = mean(result["official"], "train_s") / mean(result["ours"], "train_s")
        result["eval_speedup"] = mean(result["official"], "eval_s") / mean(result["ours"], "eval_s")
    return result


def render(out: dict, task: str, fold: int, model: str, batch_size: int, lr: float) -> str:
    lines = [f"{model} on {task} fold {fold}, batch {batch_size}, lr {lr}: per epoch"]
    for side in ("official", "ours"):
        for r in out.get(side, []):
            lines.append(f"  {side:<8} epoch {r['epoch']}: train {r['train_s']:7.1f} s  eval {r['eval_s']:6.1f} s  "
                         f"value accuracy {r['accuracy']:.3f}")
    if "train_speedup" in out:
        lines.append(f"  speed-up: training {out['train_speedup']:.2f}x, evaluation {out['eval_speedup']:.2f}x")
    return "\n".join(lines)
