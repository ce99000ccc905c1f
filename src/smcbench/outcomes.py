"""Per-example outcomes of an evaluation: what a paired test between two runs of a task needs.

A task's evaluation returns them beside its metrics; the runner writes them in the run folder (`outcomes.json`,
atomically with the result); the report pairs a sparse run with the dense run of the same seed on the same example
ids. Two kinds:
- `binary`: one 0/1 per example (accuracy, value accuracy): the primary metric is their mean;
- `bleu`: per group (a translation direction) one row of sacreBLEU's sentence statistics per sentence (hypothesis
  and reference lengths, then matching and total n-gram counts for n = 1..4); the primary metric is the mean over
  the groups of the corpus BLEU that sacreBLEU computes from the summed statistics.
Optional per-example extras ride along (a classifier's prediction and label, for macro-F1), and the dense run
keeps a short text per example (the question and its choices, the problem) for the report's lost examples.
JSON only: never a pickle.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from smcbench.errors import SmcBenchError

OUTCOMES = "outcomes.json"
FORMAT = "smcbench-outcomes/1"
Kind = Literal["binary", "bleu"]


@dataclass
class Group:
    """The examples of one group (a translation direction; the whole test set elsewhere)."""

    ids: list[str]
    values: list[Any]  # binary: 0 or 1; bleu: a list of 10 ints
    extra: dict[str, list[Any]] = field(default_factory=dict)  # e.g. prediction, label
    texts: list[str] | None = None  # what each example is, for a reader (kept by the dense run)

    def check(self, where: str) -> None:
        if len(self.ids) != len(self.values) or len(set(self.ids)) != len(self.ids):
            raise SmcBenchError(f"{where}: {len(self.ids)} ids ({len(set(self.ids))} distinct) for "
                                f"{len(self.values)} outcomes")


@dataclass
class Outcomes:
    kind: Kind
    groups: dict[str, Group]
    bleu: dict[str, Any] = field(default_factory=dict)  # bleu: sacreBLEU's settings for the score from statistics

    def without_texts(self) -> Outcomes:
        return Outcomes(self.kind, {k: Group(g.ids, g.values, g.extra) for k, g in self.groups.items()}, self.bleu)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "kind": self.kind, "bleu": self.bleu,
                "groups": {k: {"ids": g.ids, "values": g.values, "extra": g.extra,
                               **({"texts": g.texts} if g.texts is not None else {})}
                           for k, g in self.groups.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> Outcomes:
        if data.get("format") != FORMAT or data.get("kind") not in ("binary", "bleu"):
            raise SmcBenchError(f"{where}: not an smc-bench outcomes file (format {data.get('format')!r})")
        groups = {k: Group(g["ids"], g["values"], g.get("extra", {}), g.get("texts"))
                  for k, g in data["groups"].items()}
        for k, g in groups.items():
            g.check(f"{where}, group {k!r}")
        return cls(data["kind"], groups, data.get("bleu", {}))

    def count(self) -> int:
        return sum(len(g.ids) for g in self.groups.values())


def binary(ids: list[str], correct: list[bool], texts: list[str] | None = None,
           extra: dict[str, list[Any]] | None = None) -> Outcomes:
    """The outcomes of an accuracy-type metric over one test set."""
    group = Group([str(i) for i in ids], [int(bool(c)) for c in correct], extra or {}, texts)
    group.check("outcomes")
    return Outcomes("binary", {"": group})


def write(outcomes: Outcomes, path: Path) -> None:
    """Atomically: a crash never leaves a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(outcomes.to_json(), f, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(path: Path) -> Outcomes | None:
    """A run's outcomes, or None for a run finished before they were kept."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SmcBenchError(f"{path}: not readable JSON ({err})") from err
    return Outcomes.from_json(data, str(path))
