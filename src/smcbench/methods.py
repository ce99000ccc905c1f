"""The SMC-Bench methods, each a few lines on the engine and the training loop.

A method turns (task, sparsity) into trained sparse models. "After" methods start from the one dense fine-tune of
their (task, model, seed, training config), which the `Experiment` trains once and caches; LTH yields one model per
IMP round. Semantics follow the paper (see ../shared/reference/protocol.md in the development tree):

| name          | mask from                                  | then                                           |
|---------------|--------------------------------------------|------------------------------------------------|
| dense         | -                                          | fine-tune                                      |
| lth           | IMP: 20 % of the remaining per round,      | rewind to θ0, full schedule, repeat            |
|               | global magnitude on the trained weights    |                                                |
| omp_after     | global magnitude on the dense fine-tune    | retrain from those weights, full schedule      |
| random_after  | random, uniform per layer, same model      | retrain, full schedule                         |
| gmp           | cubic schedule 10 % → 80 % of training     | during the fine-tune from θ0                   |
| omp_before    | global magnitude on θ0                     | fine-tune                                      |
| random_before | random, uniform per layer, on θ0           | fine-tune                                      |
| snip          | global |g·w| on θ0, g summed over batches  | fine-tune                                      |
| *_rigl        | that Before mask                           | fine-tune with RigL updates at the GMP interval |
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from torch import nn

from smcbench.errors import SmcBenchError
from smcbench.sparsity import GradualSchedule, RigLSchedule, Sparsifier, accumulate_gradients, make_score
from smcbench.sparsity.schedules import IMP_RATE, imp_levels, imp_round
from smcbench.training import Callback, GradualPruning, MaskEnforcer, RigLUpdates

METHODS: dict[str, Callable[[Experiment, list[float]], Iterator[Outcome]]] = {}
AFTER = ("lth", "omp_after", "random_after")


@dataclass
class SparseSettings:
    """Method settings that are part of a run's identity."""

    preset: str = "all"
    interval: int | None = None  # GMP pruning / RigL update interval; None: 1/20 of training (see interval_for)
    gmp_start: float = 0.1
    gmp_end: float = 0.8
    rigl_alpha: float = 0.3
    rigl_end: float = 0.75
    snip_batches: int = 8
    random_seed: int = 0

    def interval_for(self, total_steps: int) -> int:
        """The paper prunes every 500 of CSQA's 3,000 updates (six times over the 10-80 % window, 1/6 of the run);
        short runs scale it: total/20 keeps ~14 pruning steps in the window, at least 1 update apart."""
        return self.interval or max(1, total_steps // 20)


@dataclass
class Outcome:
    """A trained model of one method at one sparsity."""

    sparsity: float
    model: nn.Module
    sparsifier: Sparsifier | None
    train: object  # TrainResult
    notes: dict = field(default_factory=dict)


class Experiment(Protocol):
    """What methods need: θ0, a fine-tune with callbacks, the shared dense model, SNIP batches. The runner
    implements it (caching the dense fine-tune); tests can implement it with tiny models."""

    settings: SparseSettings
    total_steps: int
    batch_size: int

    def initial_model(self) -> nn.Module:
        """θ0: pretrained weights and the head's seeded initial weights, identical at every call."""

    def fine_tune(self, model: nn.Module, callbacks: list[Callback], tag: str) -> object:
        """Train `model` in place with the full schedule; returns the loop's TrainResult."""

    def dense_model(self) -> nn.Module:
        """A fresh copy of the dense fine-tune (trained once per experiment configuration)."""

    def loss(self, model: nn.Module, batch: dict) -> object: ...

    def score_batches(self) -> Iterator[dict]: ...

    def finished(self, method: str, sparsity: float) -> tuple[nn.Module, dict] | None:
        """The trained model and masks of a run finished earlier, if any (lets a rerun LTH chain resume)."""


def register_method(name: str):
    def add(fn):
        METHODS[name] = fn
        return fn

    return add


def get_method(name: str):
    if name not in METHODS:
        raise SmcBenchError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}")
    return METHODS[name]


def _retrain(exp: Experiment, model: nn.Module, sp: Sparsifier, sparsity: float, tag: str,
             extra: list[Callback] = ()) -> Outcome:
    result = exp.fine_tune(model, [*extra, MaskEnforcer(sp)], tag)
    return Outcome(sparsity, model, sp, result)


def _prune(exp: Experiment, model: nn.Module, sparsity: float, how: str) -> Sparsifier:
    sp = Sparsifier(model, exp.settings.preset)
    if how == "magnitude":
        sp.prune(sparsity, "magnitude", "global")
    elif how == "random":
        # The public code's Random: every layer at the same sparsity, weights chosen at random.
        sp.prune(sparsity, make_score("random", seed=exp.settings.random_seed), "uniform")
    elif how == "snip":
        batches = exp.score_batches()
        grads = accumulate_gradients(sp.params, lambda b: exp.loss(model, b), batches, exp.settings.snip_batches)
        sp.prune(sparsity, make_score("snip", grads=grads), "global")
    else:
        raise SmcBenchError(f"unknown pruning criterion {how!r}")
    return sp


@register_method("dense")
def dense(exp: Experiment, sparsities: list[float]) -> Iterator[Outcome]:
    model = exp.initial_model()
    yield Outcome(0.0, model, None, exp.fine_tune(model, [], "dense"))


def _after(how: str):
    def method(exp: Experiment, sparsities: list[float]) -> Iterator[Outcome]:
        for s in sparsities:
            model = exp.dense_model()  # a fresh copy of the one cached dense fine-tune
            sp = _prune(exp, model, s, how)
            yield _retrain(exp, model, sp, s, f"{how}_after@{s:.3f}")

    return method


register_method("omp_after")(_after("magnitude"))
register_method("random_after")(_after("random"))


@register_method("lth")
def lth(exp: Experiment, sparsities: list[float]) -> Iterator[Outcome]:
    """IMP with rewinding to θ0: round k reaches 1 − 0.8^k; every requested level must be an IMP level. Every
    round up to the highest requested one is trained (each needs the previous); all are reported."""
    rounds = max(imp_round(s, IMP_RATE) for s in sparsities)
    trained: nn.Module | None = None
    masks = None
    for k, level in enumerate(imp_levels(rounds), 1):
        done = exp.finished("lth", level)
        if done is not None:  # this round was trained by an earlier, interrupted run
            trained, masks = done
            continue
        trained = trained if trained is not None else exp.dense_model()
        sp = Sparsifier(trained, exp.settings.preset)
        if masks is not None:
            sp.set_masks(masks)
        sp.prune(level, "magnitude", "global")  # 20 % of the remaining: pruned weights are already zero
        masks = {n: m.clone() for n, m in sp.masks.items()}
        model = exp.initial_model()  # rewind: pretrained weights and the head's initial weights
        rewound = Sparsifier(model, exp.settings.preset)
        rewound.set_masks(masks)
        out = _retrain(exp, model, rewound, level, f"lth round {k}")
        out.notes["round"] = k
        yield out
        trained = model


@register_method("gmp")
def gmp(exp: Experiment, sparsities: list[float]) -> Iterator[Outcome]:
    for s in sparsities:
        model = exp.initial_model()
        sp = Sparsifier(model, exp.settings.preset)
        st = exp.settings
        schedule = GradualSchedule.over_training(s, exp.total_steps, st.interval_for(exp.total_steps),
                                                 st.gmp_start, st.gmp_end)
        out = _retrain(exp, model, sp, s, f"gmp@{s:.3f}", [GradualPruning(sp, schedule)])
        out.notes["pruning_steps"] = schedule.steps()
        yield out


def _before(how: str, rigl: bool):
    def method(exp: Experiment, sparsities: list[float]) -> Iterator[Outcome]:
        for s in sparsities:
            model = exp.initial_model()
            sp = _prune(exp, model, s, how)
            extra: list[Callback] = []
            if rigl:
                st = exp.settings
                schedule = RigLSchedule(st.interval_for(exp.total_steps),
                                        math.floor(st.rigl_end * exp.total_steps), st.rigl_alpha)
                extra = [RigLUpdates(sp, schedule)]
            out = _retrain(exp, model, sp, s, f"{how}{'+rigl' if rigl else ''}@{s:.3f}", extra)
            if rigl:
                out.notes["rigl_updates"] = extra[0].updates
            yield out

    return method


register_method("omp_before")(_before("magnitude", rigl=False))
register_method("random_before")(_before("random", rigl=False))
register_method("snip")(_before("snip", rigl=False))
register_method("omp_rigl")(_before("magnitude", rigl=True))
register_method("random_rigl")(_before("random", rigl=True))
register_method("snip_rigl")(_before("snip", rigl=True))
