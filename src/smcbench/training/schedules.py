"""Learning-rate schedules, by name: the factor on every group's base learning rate at optimizer update `step`.

A schedule is a function `(cfg, step, total, per_epoch) -> factor` registered with `@register_schedule`; the
training config names it (`schedule: linear`) and validates the name against this registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from smcbench.errors import SmcBenchError

Schedule = Callable[[Any, int, int, int], float]
SCHEDULES: dict[str, Schedule] = {}


def register_schedule(name: str) -> Callable[[Schedule], Schedule]:
    def add(fn: Schedule) -> Schedule:
        SCHEDULES[name] = fn
        return fn

    return add


def get_schedule(name: str) -> Schedule:
    if name not in SCHEDULES:
        raise SmcBenchError(f"unknown schedule {name!r}: choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name]


def warmup_steps(cfg: Any, total: int) -> int:
    """Warmup updates: `warmup_steps` when set, else the `warmup_ratio` of the run (rounded)."""
    steps = getattr(cfg, "warmup_steps", None)
    return min(steps, total) if steps is not None else round(cfg.warmup_ratio * total)


def linear_schedule(step: int, total: int, warmup: int) -> float:
    """Linear warmup, then linear decay to 0 (as Hugging Face's get_linear_schedule_with_warmup)."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


@register_schedule("linear")
def linear(cfg: Any, step: int, total: int, per_epoch: int) -> float:
    return linear_schedule(step, total, warmup_steps(cfg, total))


def _ramp(cfg: Any, step: int, total: int) -> float:
    warmup = warmup_steps(cfg, total)
    return step / warmup if step < warmup else 1.0


@register_schedule("constant")
def constant(cfg: Any, step: int, total: int, per_epoch: int) -> float:
    """Constant after linear warmup, if any."""
    return _ramp(cfg, step, total)


@register_schedule("step")
def step_lr(cfg: Any, step: int, total: int, per_epoch: int) -> float:
    """StepLR as the public arithmetic code: x step_gamma every step_epochs epochs, after linear warmup if any."""
    return _ramp(cfg, step, total) * cfg.step_gamma ** math.floor(step / per_epoch / cfg.step_epochs + 1e-9)


@register_schedule("one_cycle")
def one_cycle(cfg: Any, step: int, total: int, per_epoch: int) -> float:
    """torch's OneCycleLR (cosine, two phases): from 1/cycle_div_factor up to 1 over the warmup fraction of the
    updates (torch's pct_start; its default is 0.3), then down to 1/(cycle_div_factor * cycle_final_div)."""
    start, end = 1.0 / cfg.cycle_div_factor, 1.0 / (cfg.cycle_div_factor * cfg.cycle_final_div)
    rising = cfg.warmup_steps if getattr(cfg, "warmup_steps", None) is not None else cfg.warmup_ratio * total
    peak = float(rising) - 1  # torch: the step at which the rate peaks

    def cos(a: float, b: float, t: float) -> float:
        return b + (a - b) / 2 * (math.cos(math.pi * t) + 1)

    if step <= peak:
        return cos(start, 1.0, step / peak) if peak > 0 else 1.0
    return cos(1.0, end, (step - peak) / max(1e-12, total - 1 - peak))
