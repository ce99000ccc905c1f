"""Measure one pruned model with one backend: latency at batch 1, throughput at a serving batch, peak memory, and
the outputs checked against the masked dense model's first.

Each (model, backend) is measured in a fresh process (`python -m smcbench.inference.worker JOB`), so its time and
peak memory are its own. The inputs are the task's evaluation examples in order, at their own lengths (batch 1) or
padded to the longest of each serving batch, as the task's evaluation pads them.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from smcbench.errors import SmcBenchError
from smcbench.inference.backends import get_backend, pruned_linears

TOLERANCE = 1e-4  # max abs difference (fp32) of a backend's outputs from the masked dense model's


@dataclass
class Job:
    """One (model, backend) measurement. `weights`: a model.safetensors of the run; None: the task's θ0 (a run
    that kept only its masks: latency depends on the pattern, not on the values)."""

    spec: dict[str, Any]
    masks: str
    backend: str
    weights: str | None = None
    examples: int = 16  # evaluation examples timed one at a time (batch 1)
    serving_batch: int = 32
    serving_examples: int = 64  # examples in the throughput passes (whole serving batches)
    reps: int = 5
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak() -> None:
    """Return freed heap to the system, then restart the kernel's peak-RSS counter (VmHWM) from now."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the peak may include memory freed before
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise SmcBenchError("/proc/self/status has no VmHWM: peak memory needs Linux")


def task_for(spec: dict[str, Any]):
    from smcbench.tasks import TaskSpec, get_task

    return get_task(TaskSpec(**spec))


def masked_model(task: Any, weights: str | None, masks: dict[str, Tensor]) -> nn.Module:
    """The run's model: its weights (or θ0) with every masked weight set to zero, in eval mode."""
    from smcbench.training.checkpoint import load_model_tensors

    model = task.initial_model()
    if weights is not None:
        load_model_tensors(model, load_file(weights))
    params = dict(model.named_parameters())
    unknown = sorted(set(masks) - set(params))
    if unknown:
        raise SmcBenchError(f"the masks name tensors the model does not have ({unknown[:3]}): they belong to "
                            "another model")
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].dtype))
    return model.eval()


def inputs(task: Any, job: Job) -> tuple[list[dict], list[dict]]:
    """(batch-1 inputs, serving batches) from the task's evaluation examples, in order."""
    examples = list(task.inference_examples())
    if not examples:
        raise SmcBenchError(f"{task.name}: no evaluation examples to time")
    singles = [task.collate([e]) for e in examples[: job.examples]]
    pool = examples[: job.serving_examples]
    batches = [task.collate(pool[a:a + job.serving_batch]) for a in range(0, len(pool), job.serving_batch)]
    return singles, batches


BUDGET_S = 20.0  # per timed figure: fewer repetitions when a (slow) backend's pass would take longer


def timed_passes(fn: Callable[[Any], Any], batches: Sequence[Any], reps: int) -> list[float]:
    """Seconds of each of `reps` passes over `batches` after one warm-up pass; fewer (at least one) when they
    would take more than BUDGET_S by the warm-up's time."""
    start = time.perf_counter()
    for b in batches:
        fn(b)
    warm = time.perf_counter() - start
    reps = max(1, min(reps, int(BUDGET_S / max(warm, 1e-9))))
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        for b in batches:
            fn(b)
        out.append(time.perf_counter() - start)
    return out


LINEAR_EXAMPLES = 4  # batch-1 examples whose pruned Linear layers are timed on their own


def linear_inputs(model: nn.Module, names: list[str], run: Callable[[], Any]) -> dict[str, list[Tensor]]:
    """The input of each named layer (the pruned Linear layers, as the backend serves them) at each call while
    `run` runs."""
    captured: dict[str, list[Tensor]] = {}
    hooks = []
    for name in names:
        lin = model.get_submodule(name)

        def hook(_m: nn.Module, args: tuple, _out: Tensor, name: str = name) -> None:
            captured.setdefault(name, []).append(args[0])
        hooks.append(lin.register_forward_hook(hook))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return captured


def _distinct(captured: dict[str, list[Tensor]]) -> list[Tensor]:
    return list({t.data_ptr(): t for ts in captured.values() for t in ts}.values())


def timed_linears(model: nn.Module, captured: dict[str, list[Tensor]], reps: int) -> list[float]:
    """Seconds of each of `reps` passes of the pruned Linear layers alone over their captured inputs (the part of
    the model a sparse kernel changes)."""
    calls = []
    for name, xs in captured.items():
        module = model.get_submodule(name)
        device = next((t.device for t in module.parameters()), torch.device("cpu"))
        calls += [(module, x.to(device)) for x in xs]
    return timed_passes(lambda call: call[0](call[1]), calls, reps)


def run_job(job: Job) -> dict[str, Any]:
    """The measurement itself (in the worker process): reference outputs, the backend's model, its check, then
    its times and peak memory."""
    from smcbench.sparsity import read_masks

    torch.set_num_threads(job.threads)
    backend = get_backend(job.backend)
    task = task_for(job.spec)
    masks = read_masks(job.masks)
    singles, batches = inputs(task, job)
    base = rss_mb()
    model = masked_model(task, job.weights, masks)

    def forward(m: nn.Module) -> Callable[[dict], Tensor]:
        return lambda b: task.inference_forward(m, b)

    with torch.inference_mode():
        reference = [forward(model)(b) for b in [*singles, *batches]]
        names = [name for name, _ in pruned_linears(model, masks)]
        served = backend.prepare(model, masks)
        del model
        run = forward(served)
        captured = linear_inputs(served, names, lambda: [run(b) for b in singles[:LINEAR_EXAMPLES]])
        diff = max(float((run(b).float().cpu() - r).abs().max()) for b, r in zip([*singles, *batches], reference,
                                                                                  strict=True))
        out: dict[str, Any] = {"backend": job.backend, "max_abs_diff": diff, "threads": job.threads}
        if not diff <= TOLERANCE:
            return {**out, "status": f"failed the check: outputs differ from the masked dense model's by {diff:.2e} "
                                     f"(> {TOLERANCE:g})"}
        del reference
        reset_peak()
        latency = [s / len(singles) * 1e3 for s in timed_passes(run, singles, job.reps)]
        count = sum(len(next(iter(b.values()))) for b in batches)
        throughput = [count / s for s in timed_passes(run, batches, job.reps)]
        memory = peak_mb() - base - sum(t.numel() * t.element_size() for t in _distinct(captured)) / 2**20
        linear = ([s / len(singles[:LINEAR_EXAMPLES]) * 1e3 for s in timed_linears(served, captured, job.reps)]
                  if captured else None)
    return {**out, "status": "ok", "latency_ms": latency, "throughput": throughput, "memory_mb": memory,
            "linear_ms": linear,
            "batch1_examples": len(singles), "serving_batch": job.serving_batch, "serving_examples": count}


def measure(job: Job, isolated: bool = True) -> dict[str, Any]:
    """Measure `job` in a fresh process (an external backend in its engine's own); a backend that cannot run here
    or cannot use the masks' pattern gives its reason as the status. `isolated=False` measures in this process
    (tests of the plumbing: its times and memory are not figures)."""
    from smcbench.sparsity import read_masks

    backend = get_backend(job.backend)
    reason = backend.unavailable() or backend.unfit(read_masks(job.masks))
    if reason:
        return {"backend": job.backend, "status": f"not measured: {reason}"}
    if backend.external:
        from smcbench.inference.external import measure_external

        return measure_external(job)
    if not isolated:
        return run_job(job)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.json"
        path.write_text(json.dumps(asdict(job)))
        proc = subprocess.run([sys.executable, "-m", "smcbench.inference.worker", str(path)], capture_output=True,
                              text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"backend": job.backend, "status": f"failed: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median and range of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}
