"""What a task's numbers mean: the primary metric's name, its direction, its chance or baseline level, and the
secondary metrics beside it. Tasks declare one; model selection, the results store, the CLI table and the report
read it (never a hard-coded "accuracy")."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    name: str = "accuracy"
    higher_is_better: bool = True
    chance: float | None = None  # the chance or trivial-baseline value, where one exists
    secondary: tuple[str, ...] = ()
    # Parts of the primary metric worth a table of their own (e.g. translation's BLEU per direction), by their
    # names in a record's metrics.
    breakdown: tuple[str, ...] = ()
    # The absolute difference from dense that counts as a failure when a single dense seed gives no spread to use,
    # in the metric's own units (accuracy: 0.01, one point; BLEU: its own scale).
    tolerance: float = 0.01

    def better(self, a: float, b: float) -> bool:
        """Is `a` strictly better than `b`?"""
        return a > b if self.higher_is_better else a < b

    def worse_than(self, value: float, reference: float, tolerance: float = 0.0) -> bool:
        """Is `value` worse than `reference` by more than `tolerance`?"""
        return value < reference - tolerance if self.higher_is_better else value > reference + tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "secondary": list(self.secondary), "breakdown": list(self.breakdown)}

    @classmethod
    def of(cls, record: dict[str, Any]) -> Metric:
        """The metric a result record declares. Records written before tasks declared their metric are accuracy
        records with the chance level among their metrics."""
        declared = record.get("metric")
        if isinstance(declared, dict):
            return cls(declared["name"], declared["higher_is_better"], declared.get("chance"),
                       tuple(declared.get("secondary", ())), tuple(declared.get("breakdown", ())),
                       declared.get("tolerance", cls.tolerance))
        return cls("accuracy", True, record.get("metrics", {}).get("chance"))

    def value(self, record: dict[str, Any]) -> float:
        return float(record["metrics"][self.name])
