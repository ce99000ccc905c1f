"""Importance scores: larger means more important (kept longer).

A score maps a slice of one weight tensor to float32 scores of the same length. Scores are computed slice by
slice so that global allocation never materialises all scores at once. A new score is a small class with a
`flat` method plus `@register_score`.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Any, Self

import torch
from torch import Tensor, nn

from smcbench.errors import SmcBenchError

Index = slice | Tensor
SCORES: dict[str, type[Score]] = {}

# SNIP's default: gradients summed over this many training batches. One batch (the SNIP paper) is noisy for
# fine-tuning a pretrained model; 8 batches of 16 is 128 examples, cheap next to any fine-tune.
DEFAULT_SNIP_BATCHES = 8


def register_score(name: str) -> Callable[[type[Score]], type[Score]]:
    """Class decorator: a pruning score by name. A name another class already has is an error naming both."""

    def add(cls: type[Score]) -> type[Score]:
        known = SCORES.get(name)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise SmcBenchError(f"score {name!r} of {cls.__module__} clashes with the score of that name in "
                                f"{known.__module__}: rename one of them")
        cls.name = name
        SCORES[name] = cls
        return cls

    return add


def make_score(name: str, **kwargs: Any) -> Score:
    """Build a registered score by name, e.g. `make_score("random", seed=3)`."""
    if name not in SCORES:
        raise SmcBenchError(f"unknown score {name!r}: choose one of {', '.join(sorted(SCORES))}")
    try:
        return SCORES[name](**kwargs)
    except TypeError as err:
        raise SmcBenchError(f"score {name!r}: {err}") from err


@dataclass
class ScoreContext:
    """What a score may need to be built for one pruning step, in tensor terms: the parameters it scores, a seed,
    and, for data-dependent scores, a loss over batches (called only by the scores that need it)."""

    params: dict[str, nn.Parameter]
    seed: int = 0
    loss: Callable[[Any], Tensor] | None = None
    batches: Callable[[], Iterable[Any]] | None = None
    num_batches: int = DEFAULT_SNIP_BATCHES
    masks: dict[str, Tensor] | None = None  # the current masks, when weights are already pruned (second-order scores)

    def gradients(self) -> dict[str, Tensor]:
        if self.loss is None or self.batches is None:
            raise SmcBenchError("this score needs gradients: give the pruning step a loss and training batches")
        return accumulate_gradients(self.params, self.loss, self.batches(), self.num_batches)


class Score(ABC):
    name = "score"

    @classmethod
    def from_context(cls, context: ScoreContext) -> Self:
        """The score for one pruning step (data-free scores need nothing; others take what they need)."""
        return cls()

    @abstractmethod
    def flat(self, name: str, weight: Tensor, index: Index) -> Tensor:
        """float32 scores of `weight.reshape(-1)[index]` for the tensor called `name`."""

    def abs_of(self, name: str, weight: Tensor) -> Tensor | None:
        """A float32 tensor (no copy) whose absolute values are these scores, flat, or None. The compiled cut
        (sparsity/band.c) reads it and takes |x| as it goes instead of writing a score chunk and reading it back."""
        return None


def build_score(name: str, context: ScoreContext) -> Score:
    """A registered score, built for one pruning step from what `context` offers."""
    if name not in SCORES:
        raise SmcBenchError(f"unknown score {name!r}: choose one of {', '.join(sorted(SCORES))}")
    return SCORES[name].from_context(context)


def _flat(t: Tensor, index: Index) -> Tensor:
    return t.detach().reshape(-1)[index]


@register_score("magnitude")
class MagnitudeScore(Score):
    def flat(self, name: str, weight: Tensor, index: Index) -> Tensor:
        return _flat(weight, index).abs().float()

    def abs_of(self, name: str, weight: Tensor) -> Tensor | None:
        w = weight.detach()
        return w.reshape(-1) if w.dtype == torch.float32 and w.is_contiguous() else None


def _salt(seed: int, name: str) -> int:
    # Stable across processes (Python's hash() is salted per process).
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:4], "little")


def uniform_hash(positions: Tensor, salt: int) -> Tensor:
    """Uniform [0, 1) float32 values that are a pure function of (position, salt).

    A counter-based generator: any slice or gather of a tensor's random scores gives the same values, so
    random pruning is reproducible whatever the chunking. (A 32-bit integer hash with good avalanche.)
    """
    m32 = 0xFFFFFFFF
    mult = 0x45D9F3B
    x = (positions * mult + salt) & m32
    x = x ^ (x >> 16)
    x = (x * mult) & m32
    x = x ^ (x >> 16)
    x = (x * mult) & m32
    x = x ^ (x >> 16)
    return (x >> 8).to(torch.float32) * (1.0 / (1 << 24))


def _positions(index: Index, device: torch.device) -> Tensor:
    if isinstance(index, slice):
        return torch.arange(index.start, index.stop, dtype=torch.int64, device=device)
    return index.to(torch.int64)


@register_score("random")
class RandomScore(Score):
    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    @classmethod
    def from_context(cls, context: ScoreContext) -> RandomScore:
        return cls(seed=context.seed)

    def flat(self, name: str, weight: Tensor, index: Index) -> Tensor:
        return uniform_hash(_positions(index, weight.device), _salt(self.seed, name))


class _GradientBased(Score):
    """Scores built from per-tensor accumulated gradients (or gradient statistics)."""

    def __init__(self, grads: dict[str, Tensor]) -> None:
        self.grads = grads

    @classmethod
    def from_context(cls, context: ScoreContext) -> Self:
        return cls(grads=context.gradients())

    def _grad(self, name: str, index: Index) -> Tensor:
        if name not in self.grads:
            raise SmcBenchError(f"{self.name} score has no gradient for {name!r}: accumulate it before pruning")
        return _flat(self.grads[name], index).float()


def accumulate_gradients(
    params: dict[str, nn.Parameter],
    loss_fn: Callable[[Any], Tensor],
    batches: Iterable[Any],
    num_batches: int = DEFAULT_SNIP_BATCHES,
) -> dict[str, Tensor]:
    """Sum the gradients of `loss_fn(batch)` over the first `num_batches` batches.

    Every batch counts (the official SNIP kept only the last sub-batch's scores under gradient accumulation).
    The parameters' `.grad` are left as they were found.
    """
    if num_batches < 1:
        raise SmcBenchError(f"num_batches must be >= 1, got {num_batches}")
    saved = {n: p.grad for n, p in params.items()}
    for p in params.values():
        p.grad = None
    seen = 0
    for batch in islice(batches, num_batches):
        loss_fn(batch).backward()
        seen += 1
    if seen == 0:
        raise SmcBenchError("no batch to compute gradient scores from: the data loader is empty")
    grads = {}
    for n, p in params.items():
        grads[n] = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
        p.grad = saved[n]
    return grads


@register_score("snip")
class SnipScore(_GradientBased):
    """SNIP connection sensitivity |g ⊙ w| (Lee et al. 2019), g summed over several batches."""

    def flat(self, name: str, weight: Tensor, index: Index) -> Tensor:
        return (self._grad(name, index) * _flat(weight, index).float()).abs()


@register_score("gradient")
class GradientScore(_GradientBased):
    """|g|: RigL's growth criterion."""

    def flat(self, name: str, weight: Tensor, index: Index) -> Tensor:
        return self._grad(name, index).abs()


@register_score("movement")
class MovementScore(Score):
    """Movement pruning (Sanh et al. 2020): S = -Σ_t w_t ⊙ g_t; weights moving away from zero score high."""

    def __init__(self, params: dict[str, nn.Parameter] | None = None) -> None:
        self.totals: dict[str, Tensor] = {}
        if params is not None:
            self.totals = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}

    @classmethod
    def from_context(cls, context: ScoreContext) -> MovementScore:
        raise SmcBenchError("movement scores are collected during training (MovementScore.update after each "
                            "backward); they cannot be built for a one-shot pruning step")

    def update(self, params: dict[str, nn.Parameter]) -> None:
        """Add this step's -w ⊙ g; call after backward, before the optimizer step."""
        for n, p in params.items():
            if p.grad is None:
                continue
            total = self.totals.setdefault(n, torch.zeros_like(p, dtype=torch.float32))
            total.sub_(p.detach().float() * p.grad.float())

    def flat(self, name: str, weight: Tensor, index: Index) -> Tensor:
        if name not in self.totals:
            raise SmcBenchError(f"movement score has no statistics for {name!r}: call update() during training")
        return _flat(self.totals[name], index)
