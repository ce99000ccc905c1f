"""Checkpoints without pickle: tensors in safetensors, everything else in JSON, written atomically.

A checkpoint is a folder `step-N` (model, optimizer state, RNG, callback states, loop position) plus `best`
(the selected model so far). `latest.json` names the newest complete folder; it is replaced atomically after the
folder is complete, so a crash at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from smcbench.errors import SmcBenchError


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def model_tensors(model: nn.Module) -> dict[str, Tensor]:
    """A copy of the state dict (never views of the live weights), shared storage de-duplicated (safetensors
    refuses aliases)."""
    seen: dict[int, str] = {}
    out = {}
    for name, t in model.state_dict().items():
        key = t.data_ptr()
        if key in seen and t.numel():
            continue
        seen[key] = name
        out[name] = t.detach().cpu().clone()
    return out


def load_model_tensors(model: nn.Module, tensors: dict[str, Tensor]) -> None:
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # Aliased tensors were saved once: the model re-ties them itself.
    real_missing = [m for m in missing if m not in _aliases(model)]
    if real_missing or unexpected:
        raise SmcBenchError(
            f"checkpoint does not fit the model: missing {real_missing[:3]}, unexpected {unexpected[:3]}"
        )


def _aliases(model: nn.Module) -> set[str]:
    seen: set[int] = set()
    out = set()
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen and t.numel():
            out.add(name)
        seen.add(t.data_ptr())
    return out


def split_state(state: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """Replace every tensor in a nested dict/list by a reference, collecting tensors under unique keys."""
    if isinstance(state, Tensor):
        key = f"{prefix}"
        tensors[key] = state.detach().contiguous().cpu()
        return {"__tensor__": key}
    if isinstance(state, dict):
        return {str(k): split_state(v, f"{prefix}/{k}", tensors) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return [split_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(state)]
    return state


def join_state(state: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(state, dict):
        if set(state) == {"__tensor__"}:
            return tensors[state["__tensor__"]]
        return {k: join_state(v, tensors) for k, v in state.items()}
    if isinstance(state, list):
        return [join_state(v, tensors) for v in state]
    return state


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    sd = optimizer.state_dict()
    return {"state": {str(k): v for k, v in sd["state"].items()}, "param_groups": sd["param_groups"]}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    optimizer.load_state_dict({"state": {int(k): v for k, v in state["state"].items()},
                               "param_groups": state["param_groups"]})


def save_checkpoint(root: Path, step: int, model: nn.Module, extra: dict, keep_best: dict | None) -> None:
    """Write `step-N` completely, then point `latest.json` at it, then drop older step folders.

    `extra` holds the optimizer state, RNG, callback states and loop position (tensors allowed anywhere).
    `keep_best` (model tensors + callback states) is written to `best` when given.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".step-{step}."))
    tensors: dict[str, Tensor] = {}
    meta = split_state(extra, "extra", tensors)
    save_file(model_tensors(model), str(tmp / "model.safetensors"))
    save_file(tensors, str(tmp / "state.safetensors"))
    write_json(tmp / "state.json", meta)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep_best is not None:
        write_best(root, keep_best)
    write_json(root / "latest.json", {"step": step, "folder": final.name})
    for old in root.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def write_best(root: Path, best: dict) -> None:
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".best."))
    tensors: dict[str, Tensor] = {}
    meta = split_state(best["callbacks"], "callbacks", tensors)
    save_file(best["model"], str(tmp / "model.safetensors"))
    save_file(tensors, str(tmp / "state.safetensors"))
    write_json(tmp / "state.json", {"callbacks": meta, "metric": best["metric"], "step": best["step"]})
    old = root / "best"
    if old.exists():
        shutil.rmtree(old)
    os.replace(tmp, old)


def load_checkpoint(root: Path) -> tuple[dict[str, Tensor], dict, dict | None] | None:
    """(model tensors, extra, best) from the newest complete checkpoint, or None when there is none."""
    pointer = root / "latest.json"
    if not pointer.is_file():
        return None
    folder = root / json.loads(pointer.read_text())["folder"]
    tensors = load_file(str(folder / "state.safetensors"))
    extra = join_state(json.loads((folder / "state.json").read_text()), tensors)
    best = None
    if (root / "best" / "state.json").is_file():
        meta = json.loads((root / "best" / "state.json").read_text())
        best_tensors = load_file(str(root / "best" / "state.safetensors"))
        best = {
            "model": load_file(str(root / "best" / "model.safetensors")),
            "callbacks": join_state(meta["callbacks"], best_tensors),
            "metric": meta["metric"],
            "step": meta["step"],
        }
    return load_file(str(folder / "model.safetensors")), extra, best


def rng_state() -> dict[str, Any]:
    """Every generator a training step may draw from: torch's CPU generator, each CUDA device's, Python's `random`
    and NumPy's global one (data augmentation, a library's dropout), as tensors and JSON values."""
    import random

    import numpy as np

    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any] | Tensor) -> None:
    """Restore what `rng_state` saved (a checkpoint written before it saved only torch's CPU generator: that)."""
    import random

    import numpy as np

    if isinstance(state, Tensor):
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(w) for w in py["words"].tolist()), py["gauss"]))
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed every generator `rng_state` covers."""
    import random

    import numpy as np

    torch.manual_seed(seed)  # also every CUDA device's
    random.seed(seed)
    np.random.seed(seed % 2**32)

