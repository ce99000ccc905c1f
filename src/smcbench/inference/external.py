"""Backends that run outside PyTorch (DeepSparse): the masked dense model is exported to ONNX here, and the engine
times it in its own Python (it may need other package versions than ours) through a small script that reads numpy
files and prints JSON (deepsparse_worker.py). Its outputs are checked here against the masked dense model's.

The engine compiles for fixed shapes: every input is padded to the longest of the timed examples (the PyTorch
backends run each at its own length), so its figures are conservative; the result says so.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from smcbench.inference.backends import deepsparse_python
from smcbench.inference.measure import TOLERANCE, Job, masked_model, task_for

WORKER = Path(__file__).with_name("deepsparse_worker.py")


class _Positional(nn.Module):
    """The task's inference forward with the batch's tensors as positional arguments (what ONNX export takes)."""

    def __init__(self, task: Any, model: nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.task, self.model, self.keys = task, model, keys

    def forward(self, *tensors: Tensor) -> Tensor:
        return self.task.inference_forward(self.model, dict(zip(self.keys, tensors, strict=True)))


def measure_external(job: Job) -> dict[str, Any]:
    from smcbench.sparsity import read_masks

    task = task_for(job.spec)
    model = masked_model(task, job.weights, read_masks(job.masks))
    examples = list(task.inference_examples())[: max(job.examples, job.serving_examples)]
    whole = {k: v for k, v in task.collate(examples).items() if k != "labels"}  # one width: the longest
    keys = list(whole)
    b = job.serving_batch
    count = min(job.serving_examples, len(examples)) // b * b
    if count == 0:
        return {"backend": job.backend, "status": f"not measured: fewer than {b} examples for a serving batch"}
    singles = [{k: v[i:i + 1] for k, v in whole.items()} for i in range(min(job.examples, len(examples)))]
    batches = [{k: v[a:a + b] for k, v in whole.items()} for a in range(0, count, b)]
    wrapped = _Positional(task, model, keys).eval()
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        root = Path(tmp)
        for name, sample in (("single", singles[0]), ("serving", batches[0])):
            with warnings.catch_warnings():  # the tracer's warnings on shapes fixed by design
                warnings.simplefilter("ignore")
                torch.onnx.export(wrapped, tuple(sample[k] for k in keys), str(root / f"{name}.onnx"), dynamo=False,
                                  input_names=keys, output_names=["output"], opset_version=17)
        for group, items in (("single", singles), ("serving", batches)):
            for i, item in enumerate(items):
                for j, k in enumerate(keys):
                    np.save(root / f"{group}-{i}-{j}.npy", item[k].numpy(), allow_pickle=False)
        spec = {"root": str(root), "inputs": len(keys), "single": len(singles), "serving": len(batches),
                "reps": job.reps, "threads": job.threads}
        (root / "job.json").write_text(json.dumps(spec))
        proc = subprocess.run([deepsparse_python(), str(WORKER), str(root / "job.json")], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return {"backend": job.backend, "status": f"failed: {tail}"}
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        diff = 0.0
        for group, items in (("single", singles), ("serving", batches)):
            for i, item in enumerate(items):
                ours = task.inference_forward(model, item).float().numpy()
                theirs = np.load(root / f"{group}-{i}-out.npy", allow_pickle=False)
                diff = max(diff, float(np.abs(theirs - ours).max()))
    out = {"backend": job.backend, "max_abs_diff": diff, "threads": job.threads,
           "note": f"inputs padded to {whole[keys[0]].shape[-1]} tokens (fixed shapes)"}
    if not diff <= TOLERANCE:
        return {**out, "status": f"failed the check: outputs differ from the masked dense model's by {diff:.2e} "
                                 f"(> {TOLERANCE:g})"}
    return {**out, "status": "ok", "latency_ms": result["latency_ms"], "throughput": result["throughput"],
            "memory_mb": result["memory_mb"], "batch1_examples": len(singles), "serving_batch": b,
            "serving_examples": count, "engine": result.get("engine", "")}
