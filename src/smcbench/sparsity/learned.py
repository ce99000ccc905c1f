"""Sparsity that is learned with extra per-weight parameters (Gale, Elsen & Hooker 2019 compare both with magnitude
pruning): sparse variational dropout (Molchanov et al. 2017) and L0 regularisation with hard-concrete gates
(Louizos et al. 2018). Pure torch, tensors and modules only.

A `LearnedSparsity` owns one extra tensor per selected weight and enters the model through forward hooks on the
modules owning those weights (Linear and Embedding), so the model's own parameters and state_dict keys never
change. It offers what the training loop needs (its parameters, a penalty for the loss, evaluation-time weights)
and what the benchmark needs afterwards: the sparsity it reached by itself and a score to rank weights by, so a run
can end at an exact level.

Penalties are means over the selected weights (scale-free: the weight λ means the same for any model size).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smcbench.errors import SmcBenchError
from smcbench.sparsity.selection import weight_owners

# Molchanov et al. 2017, eq. 14: −KL ≈ k1·σ(k2 + k3·log α) − ½·log(1 + 1/α) − k1.
KL_K1, KL_K2, KL_K3 = 0.63576, 1.87320, 1.48695
LOG_ALPHA_CLIP = (-10.0, 10.0)  # as in the sparse VD code: keeps exp() finite and the gradient alive
VD_THRESHOLD = 3.0  # log α above this: the weight is dropped (α > ~20)
VD_INIT_LOG_SIGMA2 = -10.0
# Louizos et al. 2018: hard-concrete temperature and stretch.
L0_BETA, L0_GAMMA, L0_ZETA = 2.0 / 3.0, -0.1, 1.1
EPS = 1e-8


def vd_kl(log_alpha: Tensor) -> Tensor:
    """Molchanov et al.'s approximation of KL(q(w) ‖ p(w)) for the log-uniform prior, per weight."""
    neg_kl = KL_K1 * torch.sigmoid(KL_K2 + KL_K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - KL_K1
    return -neg_kl


def hard_concrete_sample(log_alpha: Tensor, u: Tensor | None = None) -> Tensor:
    """z = min(1, max(0, s(ζ − γ) + γ)), s = σ((log u − log(1 − u) + log α)/β), u ~ U(0, 1)."""
    if u is None:
        u = torch.rand_like(log_alpha).clamp(EPS, 1 - EPS)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / L0_BETA)
    return (s * (L0_ZETA - L0_GAMMA) + L0_GAMMA).clamp(0.0, 1.0)


def hard_concrete_deterministic(log_alpha: Tensor) -> Tensor:
    """The test-time gate: min(1, max(0, σ(log α)(ζ − γ) + γ))."""
    return (torch.sigmoid(log_alpha) * (L0_ZETA - L0_GAMMA) + L0_GAMMA).clamp(0.0, 1.0)


def gate_open_probability(log_alpha: Tensor) -> Tensor:
    """P(z ≠ 0) = σ(log α − β·log(−γ/ζ)): the expected L0 norm is its sum."""
    return torch.sigmoid(log_alpha - L0_BETA * math.log(-L0_GAMMA / L0_ZETA))


def owners(model: nn.Module, params: dict[str, nn.Parameter]) -> tuple[dict[str, list[nn.Module]], list[str]]:
    """Every Linear or Embedding module using each selected weight (a tied weight: all of them, e.g. an embedding
    and the LM head), and the names of the weights some other module uses, or none does (recurrent, convolution
    weights: the hooks cannot reach the weight those modules use)."""
    found = weight_owners(model, params)
    bad = [n for n, ms in found.items() if not ms or not all(isinstance(m, nn.Linear | nn.Embedding) for m in ms)]
    return {n: ms for n, ms in found.items() if n not in bad}, bad


class _Substitute:
    """Runs a module's own forward with another weight (so a subclass's extras, e.g. a scaled embedding, stay),
    from inside that module's forward hook: the re-entry is flagged so the hook lets it through."""

    def __init__(self) -> None:
        self.active = False

    def __call__(self, module: nn.Module, weight: Tensor, args: tuple, kwargs: dict) -> Tensor:
        self.active = True
        try:
            return torch.func.functional_call(module, {"weight": weight}, args, kwargs)
        finally:
            self.active = False


class LearnedSparsity(ABC):
    """Per-weight parameters over `params` (named weights of `model`), entering through forward hooks."""

    kind: str

    def __init__(self, model: nn.Module, params: dict[str, nn.Parameter]) -> None:
        self.modules, unsupported = owners(model, params)
        if unsupported:
            raise SmcBenchError(f"{unsupported[0]!r} is not (only) the weight of Linear or Embedding layers: learned "
                                "sparsity (variational dropout, L0) handles those only")
        self.params = params
        self.extra: dict[str, nn.Parameter] = {n: nn.Parameter(self.initial(p)) for n, p in params.items()}
        self._handles: list = []
        self._substitute = _Substitute()

    @abstractmethod
    def initial(self, weight: Tensor) -> Tensor:
        """The extra tensor's initial value for `weight`."""

    @abstractmethod
    def forward_output(self, name: str, module: nn.Module, args: tuple, kwargs: dict, out: Tensor) -> Tensor:
        """The module's output as the method sees it (training or evaluation, by `module.training`)."""

    @abstractmethod
    def penalty(self) -> Tensor:
        """The regulariser, a mean over the selected weights."""

    @abstractmethod
    def scores(self) -> dict[str, Tensor]:
        """Per-weight importance (higher: kept longer), to end at an exact level."""

    @abstractmethod
    def kept(self) -> dict[str, Tensor]:
        """The weights the method itself keeps at evaluation (bool per weight)."""

    def parameters(self) -> list[nn.Parameter]:
        return list(self.extra.values())

    def install(self) -> None:
        if self._handles:
            return
        for name, modules in self.modules.items():
            for module in modules:
                self._handles.append(module.register_forward_hook(self._hook(name), with_kwargs=True))

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Tensor) -> Tensor:
            if self._substitute.active:  # the substituted call itself
                return out
            return self.forward_output(name, module, args, kwargs, out)

        return hook

    def call_with(self, module: nn.Module, weight: Tensor, args: tuple, kwargs: dict) -> Tensor:
        """`module`'s output on the same inputs with `weight` in place of its own."""
        return self._substitute(module, weight, args, kwargs)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def reached_sparsity(self) -> float:
        kept = self.kept()
        total = sum(m.numel() for m in kept.values())
        return 1.0 - sum(int(m.count_nonzero()) for m in kept.values()) / total

    @abstractmethod
    def fold(self) -> None:
        """Make the plain weights what the method's evaluation uses (before its hooks go)."""

    def state_dict(self) -> dict[str, Tensor]:
        return {n: p.detach().clone() for n, p in self.extra.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for n, p in self.extra.items():
                p.copy_(state[n])


class VariationalDropout(LearnedSparsity):
    """Sparse VD: θ is the weight itself, log σ² per weight; α = σ²/θ². Training adds the local
    reparameterisation noise to a Linear layer's output (√(x² · σ²ᵀ)·ε), and to each looked-up embedding row
    (σ·ε, the plain reparameterisation); evaluation uses θ where log α < threshold, 0 elsewhere."""

    kind = "variational_dropout"

    def __init__(self, model: nn.Module, params: dict[str, nn.Parameter], threshold: float = VD_THRESHOLD) -> None:
        self.threshold = threshold
        super().__init__(model, params)

    def initial(self, weight: Tensor) -> Tensor:
        return torch.full_like(weight, VD_INIT_LOG_SIGMA2, dtype=torch.float32)

    def log_alpha(self, name: str) -> Tensor:
        w = self.params[name]
        return (self.extra[name] - torch.log(w.float().square() + EPS)).clamp(*LOG_ALPHA_CLIP)

    def forward_output(self, name: str, module: nn.Module, args: tuple, kwargs: dict, out: Tensor) -> Tensor:
        sigma2 = self.extra[name].exp().to(module.weight.dtype)
        if not module.training:
            keep = (self.log_alpha(name) < self.threshold).to(module.weight.dtype)
            return self.call_with(module, module.weight * keep, args, kwargs)
        if isinstance(module, nn.Embedding):  # the looked-up rows of σ (the module's own scaling kept) times ε
            return out + self.call_with(module, sigma2.sqrt(), args, kwargs) * torch.randn_like(out)
        x = args[0] if args else kwargs["input"]
        variance = F.linear(x.square(), sigma2)
        return out + (variance + EPS).sqrt() * torch.randn_like(out)

    def penalty(self) -> Tensor:
        total = sum(vd_kl(self.log_alpha(n)).sum() for n in self.extra)
        return total / sum(p.numel() for p in self.extra.values())

    def scores(self) -> dict[str, Tensor]:
        return {n: -self.log_alpha(n).detach() for n in self.extra}

    def kept(self) -> dict[str, Tensor]:
        return {n: self.log_alpha(n).detach() < self.threshold for n in self.extra}

    def fold(self) -> None:
        """Nothing to fold: evaluation uses θ itself where it keeps a weight (the mask does the rest)."""


class L0Gates(LearnedSparsity):
    """L0 regularisation: the weight used is θ ⊙ z with a hard-concrete gate z per weight (a fresh sample each
    forward pass in training, the deterministic gate in evaluation); penalty: the expected fraction of open gates."""

    kind = "l0"

    def __init__(self, model: nn.Module, params: dict[str, nn.Parameter], initial_keep: float = 0.9) -> None:
        if not 0 < initial_keep < 1:
            raise SmcBenchError(f"L0: initial keep probability must be in (0, 1), got {initial_keep}")
        self.initial_keep = initial_keep
        super().__init__(model, params)

    def initial(self, weight: Tensor) -> Tensor:
        # Louizos et al.'s initialisation: log α ~ N(log(keep / (1 − keep)), 0.01²).
        mean = math.log(self.initial_keep / (1 - self.initial_keep))
        return torch.randn_like(weight, dtype=torch.float32) * 0.01 + mean

    def gate(self, name: str, training: bool) -> Tensor:
        log_alpha = self.extra[name]
        return hard_concrete_sample(log_alpha) if training else hard_concrete_deterministic(log_alpha)

    def forward_output(self, name: str, module: nn.Module, args: tuple, kwargs: dict, out: Tensor) -> Tensor:
        # The module's own output is discarded: it used θ, not θ ⊙ z (the price of leaving the model untouched).
        w = module.weight * self.gate(name, module.training).to(module.weight.dtype)
        return self.call_with(module, w, args, kwargs)

    def penalty(self) -> Tensor:
        total = sum(gate_open_probability(p).sum() for p in self.extra.values())
        return total / sum(p.numel() for p in self.extra.values())

    def scores(self) -> dict[str, Tensor]:
        return {n: gate_open_probability(p).detach() for n, p in self.extra.items()}

    def kept(self) -> dict[str, Tensor]:
        return {n: hard_concrete_deterministic(p.detach()) > 0 for n, p in self.extra.items()}

    @torch.no_grad()
    def fold(self) -> None:
        for n, w in self.params.items():
            w.mul_(hard_concrete_deterministic(self.extra[n]).to(w.dtype))
