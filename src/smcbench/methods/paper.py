"""The SMC-Bench methods, each a few lines on the engine and the training loop.

"After" methods start from the one dense fine-tune of their (task, model, seed, training config), which the
`Experiment` trains once and caches; LTH yields one model per IMP round. Semantics follow the paper (see
../shared/reference/protocol.md in the development tree):

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
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from pydantic import Field, field_validator
from torch import nn

from smcbench.errors import SmcBenchError
from smcbench.methods.base import DENSE, Experiment, Method, Outcome, SparseSettings, register_method
from smcbench.methods.callbacks import GradualPruning, MaskEnforcer, RigLUpdates
from smcbench.methods.recipe import recipe_callbacks
from smcbench.settings import Settings
from smcbench.sparsity import GradualSchedule, RigLSchedule, ScoreContext, Sparsifier, build_score
from smcbench.sparsity.allocation import NM_PATTERN
from smcbench.sparsity.schedules import IMP_RATE, imp_levels, imp_round
from smcbench.sparsity.scores import DEFAULT_SNIP_BATCHES
from smcbench.training import Callback

# --- settings: each method's schema is the union of the pieces that matter to it --------------------------------


class RandomSettings(SparseSettings):
    random_seed: int | None = Field(None, description="Seed of the random pruning scores (default: the run's "
                                    "seed, so every seed of a grid draws its own mask).")

    def score_context(self, params: dict[str, nn.Parameter], loss: Any, batches: Any, seed: int) -> ScoreContext:
        return super().score_context(params, loss, batches, seed if self.random_seed is None else self.random_seed)


class SnipSettings(SparseSettings):
    snip_batches: int = Field(DEFAULT_SNIP_BATCHES, ge=1, description="SNIP: training batches whose gradients "
                              "are summed for the scores.")

    def score_context(self, params: dict[str, nn.Parameter], loss: Any, batches: Any, seed: int) -> ScoreContext:
        return replace(super().score_context(params, loss, batches, seed), num_batches=self.snip_batches)


class IntervalSettings(Settings):
    interval: int | None = Field(None, ge=1, description="GMP pruning / RigL update interval in updates "
                                 "(default: 1/20 of training).")

    def interval_for(self, total_steps: int) -> int:
        """The paper prunes every 500 of CSQA's 3,000 updates (six times over the 10-80 % window, 1/6 of the
        run); short runs scale it: total/20 keeps ~14 pruning steps in the window, at least 1 update apart."""
        return self.interval or max(1, total_steps // 20)

    def interval_notes(self, total_steps: int) -> dict:
        """What the run used, for its result: the interval, and where it came from when it was not given."""
        notes: dict = {"interval": self.interval_for(total_steps)}
        if self.interval is None:
            notes["interval_source"] = f"default: 1/20 of the run's {total_steps} updates"
        return notes


class GMPSettings(SparseSettings, IntervalSettings):
    gmp_start: float = Field(0.1, ge=0, le=1, description="GMP: fraction of training where pruning starts.")
    gmp_end: float = Field(0.8, ge=0, le=1, description="GMP: fraction of training where the target is reached.")


class RigLSettings(SparseSettings, IntervalSettings):
    rigl_alpha: float = Field(0.3, ge=0, le=1, description="RigL: initial drop fraction (cosine decay).")
    rigl_end: float = Field(0.75, ge=0, le=1, description="RigL: fraction of training after which masks stay.")


class RandomRigLSettings(RandomSettings, RigLSettings):
    pass


class SnipRigLSettings(SnipSettings, RigLSettings):
    pass


# --- criteria: a registered score and how it is allocated ---------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    score: str  # a name in the score registry
    allocation: str  # global, uniform, erk, N:M
    label: str


MAGNITUDE = Criterion("magnitude", "global", "magnitude")
# The public code's Random: every layer at the same sparsity, weights chosen at random.
RANDOM = Criterion("random", "uniform", "random")
SNIP = Criterion("snip", "global", "snip")


def prune(exp: Experiment, model: nn.Module, sparsity: float, criterion: Criterion) -> Sparsifier:
    sp = exp.settings.sparsifier(model)
    context = exp.settings.score_context(sp.params, lambda batch: exp.loss(model, batch), exp.score_batches,
                                         exp.seed)
    sp.prune(sparsity, build_score(criterion.score, context), criterion.allocation)
    return sp


def retrain(exp: Experiment, model: nn.Module, sp: Sparsifier, sparsity: float, tag: str,
            extra: list[Callback] = (), pruning_steps: list[int] = (), steps: int | None = None) -> Outcome:
    """Train the pruned model with the full schedule (or `steps` updates), masks exact; the recipe's callbacks
    when its settings ask (`pruning_steps`: the updates after which `extra` prunes, for learning-rate rewinding)."""
    recipe = recipe_callbacks(exp.settings, exp.dense_model, exp.outputs, pruning_steps)
    result = exp.fine_tune(model, [*extra, *recipe, MaskEnforcer(sp)], tag, steps)
    return Outcome(sparsity, model, sp, result)


# --- the methods ------------------------------------------------------------------------------------------------


@register_method
class Dense(Method):
    name = DENSE
    sparse = False
    reference = True
    weights_reused = True  # every After method and kd teacher starts from it
    summary = "fine-tune from θ0 (pretrained weights + a seeded head)"

    def run(self, exp: Experiment, sparsities: list[float]) -> Iterator[Outcome]:
        model = exp.initial_model()
        yield Outcome(0.0, model, None, exp.fine_tune(model, [], "dense"))


@register_method
class DenseRetrain(Method):
    """The After methods' equal-budget control: the dense fine-tune trained again with a second full schedule from
    its own weights, never pruned. OMP (After) is this with a mask; where OMP (After) beats dense but not this
    control, the gain is more training of an under-trained model, not pruning."""

    name = "dense_retrain"
    sparse = False
    needs_dense = True
    summary = "equal-budget control: the dense fine-tune retrained with a second full schedule, never pruned"

    def levels(self, requested: list[float], settings: Settings | None = None) -> list[float]:
        return [0.0]  # one dense run, whatever levels the grid lists

    def run(self, exp: Experiment, sparsities: list[float]) -> Iterator[Outcome]:
        model = exp.dense_model()
        yield Outcome(0.0, model, None, exp.fine_tune(model, [], "dense_retrain"))


class OneShotSettings(SparseSettings):
    retrain: bool = Field(True, description="Retrain with the full schedule after pruning (false: evaluate the "
                          "pruned model as it is, the post-training setting).")
    pattern: str | None = Field(None, description="N:M semi-structured sparsity: keep N of every M consecutive "
                                "input weights of a row (e.g. 2:4); the sparsity is then 1 − N/M.")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None:
            match = NM_PATTERN.match(value)
            if not match or not 0 < int(match.group(1)) <= int(match.group(2)):
                raise ValueError(f"give N:M with 0 < N <= M, e.g. 2:4 (got {value!r})")
        return value

    def nm(self) -> tuple[int, int] | None:
        if self.pattern is None:
            return None
        n, m = self.pattern.split(":")
        return int(n), int(m)


class RandomOneShotSettings(OneShotSettings, RandomSettings):
    pass


class OneShotAfter(Method):
    """Prune the dense fine-tune once; retrain with the full schedule (or, `retrain: false`, use it as it is)."""

    needs_dense = True
    criterion: ClassVar[Criterion | None] = None

    def levels(self, requested: list[float], settings: Settings | None = None) -> list[float]:
        nm = settings.nm() if isinstance(settings, OneShotSettings) else None
        if nm is None:
            return list(requested)
        level = 1.0 - nm[0] / nm[1]
        wrong = [s for s in requested if abs(s - level) > 1e-6]
        if wrong:
            raise SmcBenchError(f"pattern {settings.pattern} prunes exactly {level:g} of the weights: give "
                                f"--sparsity {level:g} (got {', '.join(f'{s:g}' for s in wrong)})")
        return [level]

    stage = "after"

    def stage_for(self, settings: Settings) -> str:
        return "after" if settings.retrain else "post-training"

    def trainings(self, settings: Settings) -> float:
        return 1.0 if settings.retrain else 0.0

    def prune_dense(self, exp: Experiment, model: nn.Module, sparsity: float) -> tuple[Sparsifier, dict]:
        """The mask (and, for methods that update weights, the weights) at `sparsity`; notes for the result."""
        pattern = exp.settings.pattern
        return prune(exp, model, sparsity, self.criterion if pattern is None else
                     replace(self.criterion, allocation=pattern)), {}

    def run(self, exp: Experiment, sparsities: list[float]) -> Iterator[Outcome]:
        for s in sparsities:
            model = exp.dense_model()  # a fresh copy of the one cached dense fine-tune
            sp, notes = self.prune_dense(exp, model, s)
            if exp.settings.retrain:
                # (The tag names the checkpoint folder: the criterion's, as before, so interrupted runs resume.)
                label = f"{self.criterion.label}_after" if self.criterion else self.name
                out = retrain(exp, model, sp, s, f"{label}@{s:.3f}")
            else:
                out = Outcome(s, model, sp, exp.untrained(model), {"retrained": False})
            out.notes.update(notes)
            yield out


@register_method
class OMPAfter(OneShotAfter):
    name = "omp_after"
    settings = OneShotSettings
    criterion = MAGNITUDE
    summary = "global magnitude on the dense fine-tune, retrain from those weights"


@register_method
class RandomAfter(OneShotAfter):
    name = "random_after"
    settings = RandomOneShotSettings
    criterion = RANDOM
    summary = "random, uniform per layer, on the dense fine-tune, retrain"


@register_method
class LTH(Method):
    """IMP with rewinding to θ0: round k reaches 1 − 0.8^k; every requested level must be an IMP level. Every
    round up to the highest requested one is trained (each needs the previous); all are reported."""

    name = "lth"
    settings = SparseSettings
    needs_dense = True
    chained = True
    weights_reused = True  # round k + 1 prunes round k's trained model
    summary = "IMP, 20 % of the remaining weights per round, rewind to θ0"
    stage = "after"

    def levels(self, requested: list[float], settings: Settings | None = None) -> list[float]:
        # 0.738 asks for round 6, whose level is 0.737856; out-of-reach levels fail before any training.
        return [imp_levels(imp_round(s))[-1] for s in requested]

    def chain(self, level: float) -> list[float]:
        return imp_levels(imp_round(level))

    def run(self, exp: Experiment, sparsities: list[float]) -> Iterator[Outcome]:
        rounds = max(imp_round(s, IMP_RATE) for s in sparsities)
        levels = imp_levels(rounds)
        trained: nn.Module | None = None
        masks = None
        start = 0
        # Resume after the latest round an earlier run finished whose weights were kept (earlier rounds' weights
        # are dropped once the next round exists); the rounds before it are not trained again.
        for k in range(len(levels), 0, -1):
            done = exp.finished(self.name, levels[k - 1])
            if done is not None:
                trained, masks = done
                start = k
                break
        for k, level in enumerate(levels[start:], start + 1):
            trained = trained if trained is not None else exp.dense_model()
            sp = exp.settings.sparsifier(trained)
            if masks is not None:
                sp.set_masks(masks)
            sp.prune(level, "magnitude", "global")  # 20 % of the remaining: pruned weights are already zero
            masks = {n: m.clone() for n, m in sp.masks.items()}
            model = exp.initial_model()  # rewind: pretrained weights and the head's initial weights
            rewound = exp.settings.sparsifier(model)
            rewound.set_masks(masks)
            out = retrain(exp, model, rewound, level, f"lth round {k}")
            out.notes["round"] = k
            yield out
            trained = model


@register_method
class GMP(Method):
    name = "gmp"
    settings = GMPSettings
    summary = "cubic schedule from 10 % to 80 % of training, global magnitude"
    stage = "during"

    def run(self, exp: Experiment, sparsities: list[float]) -> Iterator[Outcome]:
        st = exp.settings
        for s in sparsities:
            model = exp.initial_model()
            sp = st.sparsifier(model)
            schedule = GradualSchedule.over_training(s, exp.total_steps, st.interval_for(exp.total_steps),
                                                     st.gmp_start, st.gmp_end)
            out = retrain(exp, model, sp, s, f"gmp@{s:.3f}", [GradualPruning(sp, schedule)], schedule.steps())
            out.notes.update({"pruning_steps": schedule.steps(), **st.interval_notes(exp.total_steps)})
            yield out


class OneShotBefore(Method):
    """Prune θ0 once, fine-tune; with `rigl`, RigL updates at the GMP interval."""

    criterion: ClassVar[Criterion]
    rigl: ClassVar[bool] = False
    stage = "before"

    def run(self, exp: Experiment, sparsities: list[float]) -> Iterator[Outcome]:
        st = exp.settings
        for s in sparsities:
            model = exp.initial_model()
            sp = prune(exp, model, s, self.criterion)
            extra: list[Callback] = []
            if self.rigl:
                schedule = RigLSchedule(st.interval_for(exp.total_steps), math.floor(st.rigl_end * exp.total_steps),
                                        st.rigl_alpha)
                extra = [RigLUpdates(sp, schedule)]
            out = retrain(exp, model, sp, s, f"{self.criterion.label}{'+rigl' if self.rigl else ''}@{s:.3f}", extra)
            if self.rigl:
                out.notes.update({"rigl_updates": extra[0].updates, **st.interval_notes(exp.total_steps)})
            yield out


@register_method
class OMPBefore(OneShotBefore):
    name = "omp_before"
    settings = SparseSettings
    criterion = MAGNITUDE
    summary = "global magnitude on θ0, fine-tune"


@register_method
class RandomBefore(OneShotBefore):
    name = "random_before"
    settings = RandomSettings
    criterion = RANDOM
    summary = "random, uniform per layer, on θ0, fine-tune"


@register_method
class Snip(OneShotBefore):
    name = "snip"
    settings = SnipSettings
    criterion = SNIP
    summary = "global |g·w| on θ0 (g summed over batches), fine-tune"


@register_method
class OMPRigL(OneShotBefore):
    name = "omp_rigl"
    settings = RigLSettings
    criterion = MAGNITUDE
    rigl = True
    summary = "OMP (Before) mask, RigL updates at the GMP interval"


@register_method
class RandomRigL(OneShotBefore):
    name = "random_rigl"
    settings = RandomRigLSettings
    criterion = RANDOM
    rigl = True
    summary = "Random (Before) mask, RigL updates"


@register_method
class SnipRigL(OneShotBefore):
    name = "snip_rigl"
    settings = SnipRigLSettings
    criterion = SNIP
    rigl = True
    summary = "SNIP mask, RigL updates"
