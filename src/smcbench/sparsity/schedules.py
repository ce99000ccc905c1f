"""When to prune and to what sparsity. Steps count optimizer updates, never micro-batches, so gradient
accumulation cannot stretch a schedule (a defect of the public RigL scripts)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from smcbench.errors import SmcBenchError

IMP_RATE = 0.2


def imp_levels(rounds: int, rate: float = IMP_RATE) -> list[float]:
    """Sparsity after each round of iterative magnitude pruning that removes `rate` of the remaining weights:
    1 − (1 − rate)^k for k = 1..rounds (the SMC-Bench grid: 0.2, 0.36, 0.488, ..., 0.893)."""
    if rounds < 0 or not 0 < rate < 1:
        raise SmcBenchError(f"IMP needs rounds >= 0 and 0 < rate < 1, got rounds={rounds}, rate={rate}")
    return [1.0 - (1.0 - rate) ** k for k in range(1, rounds + 1)]


PAPER_GRID = imp_levels(10)


def imp_round(sparsity: float, rate: float = IMP_RATE, tolerance: float = 2e-3) -> int:
    """The IMP round k whose level 1 − (1 − rate)^k is `sparsity` (within tolerance; 0.488 for 0.48800 too)."""
    if not 0 <= sparsity < 1:
        raise SmcBenchError(f"sparsity must be in [0, 1), got {sparsity}")
    k = round(math.log(1.0 - sparsity) / math.log(1.0 - rate))
    if abs(1.0 - (1.0 - rate) ** k - sparsity) > tolerance:
        levels = ", ".join(f"{s:.3f}" for s in imp_levels(10, rate))
        raise SmcBenchError(
            f"sparsity {sparsity} is not an IMP level (pruning {rate:.0%} per round gives {levels}, ...): "
            "LTH can only reach these"
        )
    return k


def cubic_sparsity(step: int, final: float, start: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i − s_f)(1 − (t − t0)/(t1 − t0))³ for t0 ≤ t ≤ t1."""
    if step <= start:
        return initial
    if step >= end:
        return final
    return final + (initial - final) * (1.0 - (step - start) / (end - start)) ** 3


@dataclass(frozen=True)
class GradualSchedule:
    """Gradual magnitude pruning: prune at t0, t0 + Δt, ... and always at t1, where the target is reached
    exactly (the official code stopped one interval short and never reached it)."""

    final: float
    start: int
    end: int
    interval: int
    initial: float = 0.0

    def __post_init__(self) -> None:
        if self.interval < 1 or self.start < 0 or self.end < self.start:
            raise SmcBenchError(
                f"GMP schedule needs 0 <= start <= end and interval >= 1, got start={self.start}, "
                f"end={self.end}, interval={self.interval}"
            )

    @classmethod
    def over_training(
        cls, final: float, total_steps: int, interval: int, start_frac: float = 0.1, end_frac: float = 0.8
    ) -> GradualSchedule:
        """The paper's GMP: from 10 % to 80 % of training by default."""
        if not 0 <= start_frac <= end_frac <= 1:
            raise SmcBenchError(f"GMP needs 0 <= start <= end <= 1, got {start_frac}, {end_frac}")
        start = round(start_frac * total_steps)
        return cls(final, start, max(start, round(end_frac * total_steps)), interval)

    def target(self, step: int) -> float | None:
        """The sparsity to prune to after optimizer update `step`, or None when this step does not prune."""
        if step < self.start or step > self.end:
            return None
        if step == self.end or (step - self.start) % self.interval == 0:
            return cubic_sparsity(step, self.final, self.start, self.end, self.initial)
        return None

    def steps(self) -> list[int]:
        return [t for t in range(self.start, self.end + 1) if self.target(t) is not None]


@dataclass(frozen=True)
class RigLSchedule:
    """RigL (Evci et al. 2020): every `interval` updates, until `end`, move a fraction α_t of each layer's
    active weights, α_t = α/2 · (1 + cos(π t / end))."""

    interval: int
    end: int
    alpha: float = 0.3

    def __post_init__(self) -> None:
        if self.interval < 1 or self.end < 0 or not 0 <= self.alpha <= 1:
            raise SmcBenchError(
                f"RigL needs interval >= 1, end >= 0 and 0 <= alpha <= 1, got {self.interval}, {self.end}, "
                f"{self.alpha}"
            )

    @classmethod
    def over_training(
        cls, total_steps: int, interval: int, alpha: float = 0.3, end_frac: float = 0.75
    ) -> RigLSchedule:
        """No updates after 75 % of training by default, as in the RigL paper."""
        return cls(interval, round(end_frac * total_steps), alpha)

    def drop_fraction(self, step: int) -> float | None:
        """The fraction to drop and regrow after update `step`, or None when this step does not update."""
        if step <= 0 or step >= self.end or step % self.interval:
            return None
        return self.alpha / 2.0 * (1.0 + math.cos(math.pi * step / self.end))
