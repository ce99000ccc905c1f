"""What the self-pretrained models share (esm-tiny, mbart-tiny): the cache they live in, a folder that appears
complete or not at all, one process building a missing model while the others wait for it, and a registry that
`smc-bench pretrain NAME` dispatches through (a family registers its model; the CLI knows none of them)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from smcbench.errors import SmcBenchError
from smcbench.training import Callback, LoopState


@dataclass(frozen=True)
class PretrainRequest:
    """What `smc-bench pretrain` was asked; a pretrainer refuses the fields it has no use for."""

    data_dir: Path
    out: Path | None = None
    steps: int | None = None  # None: the model's default
    max_length: int | None = None  # tokens (residues) per training sequence; None: the model's default
    task: str | None = None  # the task the model is for, where its corpus depends on it
    exclude_folds: tuple[int, ...] | None = None
    options: dict[str, str] = field(default_factory=dict)


PRETRAINERS: dict[str, Callable[[PretrainRequest], Path]] = {}


def register_pretrainer(name: str) -> Callable[[Callable[[PretrainRequest], Path]], Callable[[PretrainRequest], Path]]:
    def add(fn: Callable[[PretrainRequest], Path]) -> Callable[[PretrainRequest], Path]:
        PRETRAINERS[name] = fn
        return fn

    return add


def write_folder(out: Path, fill: Callable[[Path], None]) -> Path:
    """`fill(tmp)` writes the model into a hidden sibling of `out`, renamed into place once complete: a killed
    build leaves no half-written model behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        fill(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


_BUILDS_ALLOWED: ContextVar[bool] = ContextVar("smcbench_builds_allowed", default=True)


class NotBuilt(SmcBenchError):
    """A model that would have to be pretrained first, asked for where nothing may be trained (a dry run)."""


@contextmanager
def no_pretraining() -> Iterator[None]:
    """Within: a missing model that takes minutes to build raises NotBuilt instead (`grid --dry-run` runs nothing,
    so it must not pretrain mbart-tiny for half an hour to probe its time)."""
    token = _BUILDS_ALLOWED.set(False)
    try:
        yield
    finally:
        _BUILDS_ALLOWED.reset(token)


def ensure_built(folder: Path, marker: str, build: Callable[[Path], object], announce: str,
                 command: str | None = None) -> Path:
    """`folder` once it holds `marker`; if it does not, `build(folder)` makes it, under a lock so that concurrent
    workers build it once (the others wait, then find it). `command` (the CLI that builds it) marks a build that
    takes minutes: refused inside `no_pretraining()`; a quick one (a format conversion) passes None."""
    import fcntl

    if (folder / marker).is_file():
        return folder
    if command and not _BUILDS_ALLOWED.get():
        raise NotBuilt(f"{folder.name} is not built yet: the first run that needs it pretrains it ({announce}); "
                       f"`{command}` builds it now")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / marker).is_file():
            # A build killed by a signal leaves its hidden folder (write_folder's cleanup never ran); under the
            # lock no other build is using one.
            for stale in folder.parent.glob(f".{folder.name}.*"):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
            print(f"{announce}: once, into {folder}", flush=True)
            build(folder)
    return folder


class LossCurve(Callback):
    """The pretraining loss on one fixed batch every `every` updates: the curve a model's record keeps."""

    def __init__(self, batch: dict[str, Any], every: int) -> None:
        self.batch, self.every, self.losses = batch, every, {}

    def on_step_end(self, state: LoopState) -> None:
        if state.step % self.every == 0 or state.step == state.total_steps:
            state.model.eval()
            with torch.no_grad():
                self.losses[state.step] = float(state.model(**self.batch).loss)
            state.model.train()


RECORD = "smcbench_pretraining.json"  # what a model pretrained here keeps of its corpus, settings and loss curve


def model_provenance(folder: Path, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """Where a model folder came from: its pretraining record (without the `drop` keys), else the folder."""
    record = folder / RECORD
    if not record.is_file():
        return {"folder": str(folder)}
    data = json.loads(record.read_text())
    for key in drop:
        data.pop(key, None)
    return {"folder": str(folder), "pretraining": data}
