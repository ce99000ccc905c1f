"""What a task's numbers mean: the primary metric's name, its direction, its chance or baseline level, and the
secondary metrics beside it. Tasks declare one; model selection, the results store, the CLI table and the report
read it (never a hard-coded "accuracy")."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

LEGACY_TOLERANCE = 0.01  # the single-seed tolerance every record had before metrics declared their own


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
    # in the metric's own units (accuracy: 0.01, one point; BLEU: its own scale). None: the task declares none, and
    # the single-seed rule says so instead of assuming one.
    tolerance: float | None = None
    # Secondary metrics for which lower is better (every other one: higher), as lm-evaluation-harness declares a
    # direction per metric.
    secondary_lower_is_better: tuple[str, ...] = ()
    # Metrics in a record that a shallow predictor scores from the data alone (protein: the majority class, residue
    # composition), in the primary metric's units: a dense model no better than one has nothing a sparse model can be
    # seen to lose, so the report shows them beside dense.
    baselines: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        stray = set(self.secondary_lower_is_better) - set(self.secondary)
        if stray:
            raise ValueError(f"metric {self.name}: {sorted(stray)} are not among its secondary metrics")

    def higher_is_better_for(self, name: str) -> bool:
        """The direction of the primary metric or of a secondary one."""
        return self.higher_is_better if name == self.name else name not in self.secondary_lower_is_better

    def better(self, a: float, b: float) -> bool:
        """Is `a` strictly better than `b`?"""
        return a > b if self.higher_is_better else a < b

    def worse_than(self, value: float, reference: float, tolerance: float = 0.0) -> bool:
        """Is `value` worse than `reference` by more than `tolerance`?"""
        return value < reference - tolerance if self.higher_is_better else value > reference + tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "secondary": list(self.secondary), "breakdown": list(self.breakdown),
                "secondary_lower_is_better": list(self.secondary_lower_is_better), "baselines": list(self.baselines)}

    @classmethod
    def of(cls, record: dict[str, Any]) -> Metric:
        """The metric a result record declares. Records written before tasks declared their metric are accuracy
        records with the chance level among their metrics."""
        declared = record.get("metric")
        if isinstance(declared, dict):
            # Records written before a metric declared its tolerance were judged with 0.01: they keep it.
            return cls(declared["name"], declared["higher_is_better"], declared.get("chance"),
                       tuple(declared.get("secondary", ())), tuple(declared.get("breakdown", ())),
                       declared.get("tolerance", LEGACY_TOLERANCE),
                       tuple(declared.get("secondary_lower_is_better", ())), tuple(declared.get("baselines", ())))
        return cls("accuracy", True, record.get("metrics", {}).get("chance"), tolerance=LEGACY_TOLERANCE)

    def value(self, record: dict[str, Any]) -> float:
        return float(record["metrics"][self.name])
