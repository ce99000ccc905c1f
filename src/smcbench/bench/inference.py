"""`smc-bench bench inference`: what the sparsity buys. Every pruned model is measured with every inference
backend (smcbench.inference.backends): latency at batch 1, throughput at a serving batch, peak memory, the pruned
Linear layers alone, and its size on disk per format; each backend's outputs checked against the masked dense
model's first. All ratios are against the dense backend measured in the same run.

Two sources of pruned models:
- a grid's output folder (`--runs`): each finished run's masks, on the run's kept weights, else the dense
  reference's kept weights, else θ0 (latency depends on the pattern, not the values); written to
  `<runs>/inference.json`, which the report reads ("What the sparsity buys");
- otherwise the task's pretrained model pruned by magnitude, uniformly over the encoder's Linear layers (the `esm`
  selection), at the paper's levels (and 2:4): a benchmark of the kernels on the task's real inputs.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from smcbench.errors import SmcBenchError
from smcbench.inference.backends import BACKENDS
from smcbench.inference.measure import Job, masked_model, measure, spread, task_for
from smcbench.inference.results import crossover, pattern_of, ratio
from smcbench.inference.size import disk_sizes

LEVELS = (0.2, 0.36, 0.488, 0.59, 0.672, 0.738, 0.79, 0.832, 0.866, 0.893)
FILE = "inference.json"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """A backend's result with its repeated figures as median and range."""
    out = {k: v for k, v in result.items() if k not in ("latency_ms", "throughput", "linear_ms")}
    for key in ("latency_ms", "throughput", "linear_ms"):
        if result.get(key):
            out[key] = spread(result[key])
    return out


def measure_model(spec: dict, masks_path: Path, weights: str | None, backends: Sequence[str], job: dict,
                  echo: Callable[[str], None], isolated: bool = True) -> dict[str, Any]:
    out = {}
    for name in backends:
        start = time.perf_counter()
        out[name] = summarize(measure(Job(spec=spec, masks=str(masks_path), backend=name, weights=weights, **job),
                                      isolated))
        echo(f"    {name:<10} {out[name]['status'][:90]}  ({time.perf_counter() - start:.0f} s)")
    return out


def flop_ratio(model: torch.nn.Module, masks: dict[str, torch.Tensor], shapes: list[tuple[int, int]]) -> float:
    """Encoder FLOPs of the model over those of its shrunk copy on these input shapes: the speedup the removed
    units predict."""
    import copy

    from smcbench.structure import encoder_flops, shrink

    small = copy.deepcopy(model)
    shrink(small, masks)
    return encoder_flops(model, shapes) / encoder_flops(small, shapes)


def batch_shapes(task: Any, examples: int) -> list[tuple[int, int]]:
    """(sequences, length) of each batch-1 input timed (a multiple-choice question is several sequences)."""
    shapes = []
    for e in list(task.inference_examples())[:examples]:
        ids = task.collate([e])["input_ids"]
        shapes.append((ids.numel() // ids.shape[-1], ids.shape[-1]))
    return shapes


def synthetic(spec: dict, levels: Sequence[float], patterns: Sequence[str], structured: Sequence[float],
              backends: Sequence[str], job: dict, echo: Callable[[str], None]) -> list[dict]:
    """The task's θ0 pruned by magnitude over the encoder's Linear layers at each level (uniform), with each N:M
    pattern in `patterns`, and by whole heads and neurons at each `structured` level; then measured."""
    from smcbench import structure
    from smcbench.methods.structured import unit_sparsifier
    from smcbench.sparsity import Sparsifier
    from smcbench.sparsity.sparsifier import write_masks

    task = task_for(spec)
    task.inference_examples()  # missing data: one error now, not one per measurement
    rows = []
    plans = ([("dense", 0.0, None)] + [(f"{lv:g}", lv, "uniform") for lv in levels]
             + [(p, _nm_level(p), p) for p in patterns] + [(f"heads+neurons {lv:g}", lv, "structured")
                                                            for lv in structured])
    shapes = batch_shapes(task, job["examples"])
    with tempfile.TemporaryDirectory() as tmp:
        for label, level, allocation in plans:
            model = task.initial_model()
            sp = Sparsifier(model, "esm")
            flops = None
            if allocation == "structured":
                unit_masks = structure.unit_masks(model, level)
                sp = unit_sparsifier(model, unit_masks)
                flops = flop_ratio(model, unit_masks, shapes)
            elif allocation is not None:
                sp.prune(level, "magnitude", allocation)
            path = Path(tmp) / f"{label}.safetensors"
            if allocation:
                sp.save_masks(path)
            else:  # the dense baseline: nothing masked
                write_masks(path, {})
            masks = {k: m.bool() for k, m in sp.masks.items()} if allocation else {}
            weights = {k: v.detach() * masks[k] if k in masks else v.detach()
                       for k, v in model.state_dict().items()}
            echo(f"  {spec['task']} {spec.get('model') or ''}: {label} (sparsity {sp.sparsity():.3f})")
            rows.append({"label": label, "method": {None: "dense", "structured": "structured"}.get(allocation,
                                                                                             "magnitude"),
                         "flop_ratio": flops,
                         "target_sparsity": level,
                         "achieved_sparsity": sp.sparsity(), "pattern": pattern_of(masks),
                         "weights": "θ0", "sizes": disk_sizes(weights, masks),
                         "backends": measure_model(spec, path, None, backends if allocation else ["dense"], job,
                                                   echo)})
            del model, sp
    return rows


def _nm_level(pattern: str) -> float:
    from smcbench.sparsity.allocation import NM_PATTERN

    nm = NM_PATTERN.match(pattern)
    if not nm or int(nm.group(2)) == 0:
        raise SmcBenchError(f"--patterns {pattern!r}: give N:M patterns such as 2:4")
    return 1 - int(nm.group(1)) / int(nm.group(2))


def from_runs(root: Path, backends: Sequence[str], job: dict, echo: Callable[[str], None],
              isolated: bool = True, data_dir: str | None = None) -> list[dict]:
    """Every finished run in a grid's output folder with masks on disk (and the dense references); `data_dir`:
    where their data is (a run's identity leaves the folder out; default: the default data folder)."""
    from smcbench.methods import is_reference, is_sparse
    from smcbench.runner.single import MASKS, WEIGHTS
    from smcbench.runner.store import ResultStore
    from smcbench.sparsity import read_masks
    from smcbench.sparsity.sparsifier import write_masks

    db = root / "results.db"
    if not db.is_file():
        raise SmcBenchError(f"--runs {str(root)!r}: no results.db there: give a grid's output folder")
    records = ResultStore(db).records()
    refs = {_key(r): r for r in records if is_reference(r["method"])}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in records:
            sparse = is_sparse(r["method"], r["target_sparsity"])
            if not sparse and not is_reference(r["method"]):
                continue  # a dense control is as fast as dense
            folder = Path(r.get("dir", ""))
            ref = refs.get(_key(r))
            weights = next((str(p) for p in (folder / WEIGHTS, Path(ref["dir"]) / WEIGHTS if ref else None)
                            if p is not None and p.is_file()), None)
            spec = {**r["config"]["task"], **({"data_dir": data_dir} if data_dir else {})}
            if sparse:
                if not (folder / MASKS).is_file():
                    echo(f"  {r['run_id']}: no masks on disk: skipped")
                    continue
                masks_path = folder / MASKS
                masks = read_masks(masks_path)
            else:
                masks_path, masks = Path(tmp) / "none.safetensors", {}
                write_masks(masks_path, {})
            model = masked_model(task_for(spec), weights, masks)
            tensors = {k: v.detach() for k, v in model.state_dict().items()}
            del model
            echo(f"  {r['task']} {r['model']}: {r['method']} @ {r['target_sparsity']:.3f} ({r['run_id']})")
            metric = r["metric"]["name"]
            rows.append({"run_id": r["run_id"], "task": r["task"], "model": r["model"], "seed": r["seed"],
                         "fold": r.get("fold"), "method": r["method"], "target_sparsity": r["target_sparsity"],
                         "achieved_sparsity": r.get("achieved_sparsity", 0.0), "metric": metric,
                         "pattern": pattern_of(masks),
                         "value": r["metrics"].get(metric),
                         "higher_is_better": r["metric"].get("higher_is_better", True),
                         "weights": "run" if weights and Path(weights).parent == folder else
                         ("dense reference" if weights else "θ0"),
                         "sizes": disk_sizes(tensors, masks),
                         "backends": measure_model(spec, masks_path, weights, backends if sparse else ["dense"],
                                                   job, echo, isolated)})
    return rows


def _key(r: dict) -> tuple:
    return (r["task"], r["model"], r["seed"], r.get("fold"))


def run(runs: Path | None, spec: dict, levels: Sequence[float], patterns: Sequence[str], backends: Sequence[str],
        job: dict, out: Path | None, echo: Callable[[str], None], structured: Sequence[float] = (),
        isolated: bool = True) -> dict[str, Any]:
    """Measure (`isolated`: each (model, backend) in its own process, as figures need) and write the JSON."""
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise SmcBenchError(f"--backend {unknown[0]!r}: choose from {', '.join(BACKENDS)}")
    if "dense" not in backends:
        backends = ["dense", *backends]  # the baseline of every ratio
    start = time.perf_counter()
    rows = (from_runs(runs, backends, job, echo, isolated, spec.get("data_dir")) if runs is not None
            else synthetic(spec, levels, patterns, structured, backends, job, echo))
    result = {"machine": machine(), "job": job, "backends": {b: BACKENDS[b].summary for b in backends},
              "source": str(runs) if runs is not None else f"{spec['task']} θ0, magnitude over the encoder's "
              "Linear layers", "rows": rows, "seconds": time.perf_counter() - start}
    target = out or (runs / FILE if runs is not None else None)
    if target is not None:
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(target)
    return result


def _fmt(s: dict, digits: int = 1) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def _rx(row: dict, backend: str, key: str) -> str:
    v = ratio(row, backend, key)
    return f"{v:4.2f}" if v is not None else "  - "


def render(result: dict) -> str:
    m = result["machine"]
    job = result["job"]
    lines = [f"inference: {result['source']}",
             f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; {job.get('threads')} threads; batch 1 "
             f"over {job.get('examples')} examples, serving batch {job.get('serving_batch')} over "
             f"{job.get('serving_examples')}; {job.get('reps')} repetitions (median [min-max])", ""]
    backends = list(result["backends"])
    head = (f"{'model':<22} {'sparsity':>8} {'backend':<10} {'batch 1 ms':>20} {'x':>5} {'throughput /s':>20} "
            f"{'x':>5} {'linears ms':>9} {'x':>5} {'memory MB':>9} {'max diff':>8}")
    lines += [head, "-" * len(head)]
    for r in result["rows"]:
        name = r.get("label") or f"{r['method']}"
        for b in backends:
            x = r["backends"].get(b)
            if x is None:
                continue
            if x["status"] != "ok":
                lines.append(f"{name:<22} {r['achieved_sparsity']:8.3f} {b:<10} {x['status'][:100]}")
                continue
            lat, thr, lin = x["latency_ms"], x["throughput"], x.get("linear_ms")
            linears = f"{lin['median']:9.2f}" if lin else f"{'-':>9}"
            lines.append(f"{name:<22} {r['achieved_sparsity']:8.3f} {b:<10} {_fmt(lat, 2):>20} "
                         f"{_rx(r, b, 'latency_ms'):>5} {_fmt(thr):>20} {_rx(r, b, 'throughput'):>5} "
                         f"{linears} {_rx(r, b, 'linear_ms'):>5} "
                         f"{x['memory_mb']:9.1f} {x['max_abs_diff']:8.1e}")
    lines += ["", f"{'model':<22} {'sparsity':>8} " + " ".join(f"{k:>13}" for k in ("dense MB", "bitmask MB",
                                                                                   "CSR MB", "bitmask+zlib"))]
    for r in result["rows"]:
        s = r["sizes"]
        lines.append(f"{(r.get('label') or r['method']):<22} {r['achieved_sparsity']:8.3f} "
                     + " ".join(f"{s[k] / 1e6:13.2f}" for k in ("dense", "bitmask", "csr", "bitmask_zlib")))
    shrunk = [r for r in result["rows"] if r.get("flop_ratio") and ratio(r, "shrunk", "latency_ms")]
    if shrunk:
        lines += ["", "structured: measured batch-1 speedup of the shrunk model vs the speedup its removed FLOPs "
                  "predict (encoder matrix products)"]
        for r in shrunk:
            got = ratio(r, "shrunk", "latency_ms")
            lines.append(f"  {r['label']:<22} measured {got:5.2f}  predicted {r['flop_ratio']:5.2f}  "
                         f"({(got / r['flop_ratio'] - 1) * 100:+.0f} %)")
    lines.append("")
    for b in backends[1:]:
        cross = {k: crossover(result["rows"], b, k) for k in ("latency_ms", "throughput", "linear_ms")}
        lines.append(f"crossover {b:<10}: " + ", ".join(
            f"{k.split('_')[0]} {'never' if v is None else f'from {v:.3f}'}" for k, v in cross.items()))
    lines.append(f"({result['seconds']:.0f} s)")
    return "\n".join(lines)
