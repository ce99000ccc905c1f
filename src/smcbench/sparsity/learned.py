"""Sparsity that is learned with extra per-weight parameters (Gale, Elsen & Hooker 2019 compare both with magnitude
pruning): sparse variational dropout (Molchanov et al. 2017) and L0 regularisation with hard-concrete gates
(Louizos et al. 2018). Pure torch, tensors and modules only.

A `LearnedSparsity` owns one extra tensor per selected weight and enters the model by wrapping the forward of the
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


# Elementwise work over every selected weight each step (the penalties, the gates) runs chunk by chunk with its
# gradient computed on the way, in one fused autograd function: autograd's full-size temporaries (a dozen tensors
# of the model's size, each written and read back from memory) cost more than the training step itself did.
# A chunk of 2^20 (its temporaries, 4 MB each, in the L3 cache) rather than 2^16: a dozen torch calls a chunk
# over MiniLM's 22.3M VD weights were 340 chunks' worth of per-call overhead (the KL sum and its gradients 218 ->
# 158 ms a step on the development machine; the gradients are elementwise, the same bit for bit).
_CHUNK = 1 << 20


def _chunks(n: int) -> list[tuple[int, int]]:
    return [(a, min(a + _CHUNK, n)) for a in range(0, n, _CHUNK)]


class _VDKLSum(torch.autograd.Function):
    """Σ vd_kl(log α) over one tensor, log α = clamp(log σ² − log(θ² + ε)); the gradients w.r.t. log σ² and θ are
    computed in the forward pass (the clamp passes gradient on [lo, hi], as torch's does)."""

    @staticmethod
    def forward(ctx, log_sigma2: Tensor, weight: Tensor) -> Tensor:
        s = log_sigma2.detach().reshape(-1)
        w = weight.detach().reshape(-1)
        grad_s = torch.empty_like(s)
        grad_w = torch.empty(s.shape, dtype=torch.float32, device=s.device)
        total = torch.zeros((), dtype=torch.float64, device=s.device)
        lo, hi = LOG_ALPHA_CLIP
        for a, b in _chunks(s.numel()):
            wc = w[a:b].float()
            w2 = wc.square().add_(EPS)
            la = s[a:b] - w2.log()
            inside = (la >= lo) & (la <= hi)
            la.clamp_(lo, hi)
            z = torch.sigmoid(la * KL_K3 + KL_K2)
            # kl = k1 − k1·σ(k2 + k3·la) + ½·softplus(−la); dkl/dla = −k1·k3·σ(·)(1 − σ(·)) − ½·σ(−la)
            total += (F.softplus(-la).mul_(0.5).sub_(z, alpha=KL_K1).add_(KL_K1)).sum(dtype=torch.float64)
            g = z.mul_(z.neg().add_(1.0)).mul_(-KL_K1 * KL_K3).sub_(torch.sigmoid(la.neg_()), alpha=0.5)
            g.mul_(inside)
            grad_s[a:b] = g
            grad_w[a:b] = g.mul_(wc).mul_(-2.0).div_(w2)
        ctx.save_for_backward(grad_s.view_as(log_sigma2), grad_w.view(weight.shape))
        ctx.weight_dtype = weight.dtype
        return total.float()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        grad_s, grad_w = ctx.saved_tensors
        return grad_s * grad, (grad_w * grad).to(ctx.weight_dtype)


class _HardConcreteSample(torch.autograd.Function):
    """hard_concrete_sample with u drawn for the whole tensor at once (the same draws as one rand_like), then the
    gate and its derivative chunk by chunk; the derivative is kept in u's buffer."""

    @staticmethod
    def forward(ctx, log_alpha: Tensor, u: Tensor | None) -> Tensor:
        la = log_alpha.detach().reshape(-1)
        u = torch.rand_like(la) if u is None else u.detach().reshape(-1).clone()
        z = torch.empty_like(la)
        for a, b in _chunks(la.numel()):
            uc = u[a:b].clamp_(EPS, 1 - EPS)
            s = torch.sigmoid((uc.log() - torch.log1p(-uc)).add_(la[a:b]).div_(L0_BETA))
            zr = s * (L0_ZETA - L0_GAMMA) + L0_GAMMA
            torch.clamp(zr, 0.0, 1.0, out=z[a:b])
            # dz/dlog α = (ζ − γ)·s(1 − s)/β where the stretched gate is inside [0, 1], else 0
            uc.copy_(s.mul_(s.neg().add_(1.0)).mul_((L0_ZETA - L0_GAMMA) / L0_BETA).mul_((zr >= 0) & (zr <= 1)))
        ctx.save_for_backward(u.view_as(log_alpha))
        return z.view_as(log_alpha)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (dz,) = ctx.saved_tensors
        return grad * dz, None


class _OpenProbabilitySum(torch.autograd.Function):
    """Σ gate_open_probability(log α) over one tensor, with its gradient p(1 − p) computed on the way."""

    @staticmethod
    def forward(ctx, log_alpha: Tensor) -> Tensor:
        la = log_alpha.detach().reshape(-1)
        grad = torch.empty_like(la)
        total = torch.zeros((), dtype=torch.float64, device=la.device)
        shift = L0_BETA * math.log(-L0_GAMMA / L0_ZETA)
        for a, b in _chunks(la.numel()):
            p = torch.sigmoid(la[a:b] - shift)
            total += p.sum(dtype=torch.float64)
            grad[a:b] = p.mul_(p.neg().add_(1.0))
        ctx.save_for_backward(grad.view_as(log_alpha))
        return total.float()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (g,) = ctx.saved_tensors
        return g * grad


def hard_concrete_sample(log_alpha: Tensor, u: Tensor | None = None) -> Tensor:
    """z = min(1, max(0, s(ζ − γ) + γ)), s = σ((log u − log(1 − u) + log α)/β), u ~ U(0, 1)."""
    return _HardConcreteSample.apply(log_alpha, u)


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


Run = Callable[[Tensor | None], Tensor]


def _plain_embedding(module: nn.Module) -> bool:
    """An nn.Embedding whose output is the looked-up rows themselves (no subclass scaling, no max_norm): the
    methods may then work on the looked-up rows only instead of the whole table."""
    return type(module) is nn.Embedding and module.max_norm is None


def _input(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["input"]


class LearnedSparsity(ABC):
    """Per-weight parameters over `params` (named weights of `model`), entering by wrapping each owning module's
    forward (an instance attribute; removed by `remove`)."""

    kind: str

    def __init__(self, model: nn.Module, params: dict[str, nn.Parameter]) -> None:
        self.modules, unsupported = owners(model, params)
        if unsupported:
            raise SmcBenchError(f"{unsupported[0]!r} is not (only) the weight of Linear or Embedding layers: learned "
                                "sparsity (variational dropout, L0) handles those only")
        self.params = params
        self.extra: dict[str, nn.Parameter] = {n: nn.Parameter(self.initial(p)) for n, p in params.items()}
        self._wrapped: list[nn.Module] = []

    @abstractmethod
    def initial(self, weight: Tensor) -> Tensor:
        """The extra tensor's initial value for `weight`."""

    @abstractmethod
    def forward_output(self, name: str, module: nn.Module, run: Run, args: tuple, kwargs: dict) -> Tensor:
        """The module's output as the method sees it (training or evaluation, by `module.training`).
        `run(w)` is the module's own forward on the inputs with weight `w` in place of its own (None: its own), so
        a subclass's extras (a scaled embedding) stay and no forward is computed twice."""

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
        """Wrap the forward of every module owning a selected weight. A forward wrapper rather than a forward hook:
        a hook sees the output already computed with the plain weight, which L0 and evaluation would discard."""
        if self._wrapped:
            return
        for name, modules in self.modules.items():
            for module in modules:
                wrapper = self._wrapper(name, module, module.forward)
                wrapper.smcbench_previous = module.__dict__.get("forward")  # a wrapper installed before ours
                module.forward = wrapper
                self._wrapped.append(module)

    def _wrapper(self, name: str, module: nn.Module, own_forward: Callable) -> Callable:
        def run(weight: Tensor | None, args: tuple, kwargs: dict) -> Tensor:
            if weight is None:
                return own_forward(*args, **kwargs)
            # The swap torch.func.functional_call makes, without re-entering the module's __call__ (its hooks).
            own = module._parameters["weight"]
            module._parameters["weight"] = weight
            try:
                return own_forward(*args, **kwargs)
            finally:
                module._parameters["weight"] = own

        def forward(*args, **kwargs) -> Tensor:
            return self.forward_output(name, module, lambda w: run(w, args, kwargs), args, kwargs)

        return forward

    def remove(self) -> None:
        for module in self._wrapped:
            previous = module.forward.smcbench_previous
            del module.forward
            if previous is not None:
                module.forward = previous
        self._wrapped.clear()

    def reached_sparsity(self) -> float:
        kept = self.kept()
        total = sum(m.numel() for m in kept.values())
        return 1.0 - sum(int(m.count_nonzero()) for m in kept.values()) / total

    @abstractmethod
    def fold(self) -> None:
        """Make the plain weights what the method's evaluation uses (before `remove`)."""

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

    def forward_output(self, name: str, module: nn.Module, run: Run, args: tuple, kwargs: dict) -> Tensor:
        if not module.training:
            keep = (self.log_alpha(name) < self.threshold).to(module.weight.dtype)
            return run(module.weight * keep)
        out = run(None)
        if isinstance(module, nn.Embedding):  # σ of the looked-up rows (the module's own scaling kept) times ε
            if _plain_embedding(module):  # look up log σ² first: exp and sqrt on those rows, not the whole table
                rows = F.embedding(_input(args, kwargs), self.extra[name], module.padding_idx)
                sigma = rows.exp().sqrt().to(module.weight.dtype)
            else:
                sigma = run(self.extra[name].exp().sqrt().to(module.weight.dtype))
            return out + sigma * torch.randn_like(out)
        x = _input(args, kwargs)
        variance = F.linear(x.square(), self.extra[name].exp().to(module.weight.dtype))
        return out + (variance + EPS).sqrt() * torch.randn_like(out)

    def penalty(self) -> Tensor:
        total = sum(_VDKLSum.apply(self.extra[n], self.params[n]) for n in self.extra)
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

    def forward_output(self, name: str, module: nn.Module, run: Run, args: tuple, kwargs: dict) -> Tensor:
        if module.training and _plain_embedding(module):
            # Gates for the rows looked up (each distinct row once, as the whole table's sample would give them).
            rows, inverse = torch.unique(_input(args, kwargs), return_inverse=True)
            w = module.weight[rows] * hard_concrete_sample(self.extra[name][rows]).to(module.weight.dtype)
            padding = None
            if module.padding_idx is not None:
                at = (rows == module.padding_idx).nonzero()
                padding = int(at[0, 0]) if at.numel() else None
            return F.embedding(inverse, w, padding, scale_grad_by_freq=module.scale_grad_by_freq)
        return run(module.weight * self.gate(name, module.training).to(module.weight.dtype))

    def penalty(self) -> Tensor:
        total = sum(_OpenProbabilitySum.apply(p) for p in self.extra.values())
        return total / sum(p.numel() for p in self.extra.values())

    def scores(self) -> dict[str, Tensor]:
        return {n: gate_open_probability(p).detach() for n, p in self.extra.items()}

    def kept(self) -> dict[str, Tensor]:
        return {n: hard_concrete_deterministic(p.detach()) > 0 for n, p in self.extra.items()}

    @torch.no_grad()
    def fold(self) -> None:
        for n, w in self.params.items():
            w.mul_(hard_concrete_deterministic(self.extra[n]).to(w.dtype))
