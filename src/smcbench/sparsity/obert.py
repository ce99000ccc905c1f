"""Optimal BERT Surgeon (Kurtic et al. 2022): second-order pruning with a block-diagonal empirical Fisher.

Each selected tensor, flattened, is cut into blocks of B consecutive weights (the last block padded). Per block the
empirical Fisher is F = λI + (1/m) Σ_i g_i g_iᵀ over m gradients; its inverse is kept directly and updated with
one Woodbury rank-one step per gradient,

    F⁻¹ ← F⁻¹ − (F⁻¹g)(F⁻¹g)ᵀ / (m + gᵀF⁻¹g),

so no d×d matrix and no B×B inversion per gradient ever exists: memory is d·B floats, work O(d·B) per gradient.

During gradual pruning the gradients are masked before they enter the Fisher (as SparseML does): a pruned weight
stays zero, so the Fisher that matters for the kept weights K is the one given w_pruned = 0, F_KK, and with masked
gradients the pruned coordinates decouple (their rows of F are λ·e_q), so the kept block of F⁻¹ is exactly
(F_KK)⁻¹. Unmasked gradients would give the kept weights the unconditional [F⁻¹]_KK instead.

Saliency of weight q: ρ_q = w_q² / (2 [F⁻¹]_qq) (the loss increase of removing it, OBS). After the mask is chosen,
the weights still kept in a block move by the OBS update for the set Q pruned in that block,

    δw = −F⁻¹[:, Q] (F⁻¹[Q, Q])⁻¹ w_Q,

which zeroes w_Q and minimises the quadratic loss increase. Weights pruned earlier belong to Q too (their w is 0), so
the update cannot revive them. The solve with F⁻¹[Q, Q] runs in float64: with few gradients and a small λ a block's
F⁻¹ has eigenvalues from ~1/λ down to ~1/‖g‖², and a float32 solve of it can move the kept weights by many times
their size. That is not enough when F⁻¹ itself is inaccurate: stored in float32 and built by Woodbury steps that
start from 1/λ, it loses the small eigen-directions once ‖g‖²/(mλ) nears 1/ε₃₂ (unit-scale gradients at λ = 1e-7;
fine-tuning gradients of ~1e-3 are far from it). A block whose update then moves a kept weight by more than
OBS_GUARD times the block's largest weight, or is not finite, is only masked (no update) and counted: the method
records the count in its notes. Pure torch, tensors only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import islice
from typing import Any

import torch
from torch import Tensor, nn

from smcbench.errors import SmcBenchError
from smcbench.sparsity.scores import Index, Score, ScoreContext, register_score

DEFAULT_BLOCK = 50  # oBERT's B
DEFAULT_GRADIENTS = 1024  # oBERT's m
DEFAULT_DAMP = 1e-7  # oBERT's λ (the Fisher's dampening)
OBS_GUARD = 10.0  # an OBS update larger than this × the block's max |w| comes from an inaccurate F⁻¹: not applied
SOLVE_CHUNK = 4096  # blocks solved at once in the OBS update (float64: bounds the temporaries to ~80 MB at B = 50)
# Gradients folded into the inverses at once, by one rank-k Woodbury update (equal to k rank-one updates in exact
# arithmetic): the inverses, B floats a weight, are read and written once per k gradients instead of once per
# gradient, which bounded the Fisher work by memory bandwidth. The k gradients wait in blocked form (k floats a
# weight, at most a third of the inverses' B); 1 gives the sequential updates of the reference implementation.
UPDATE_RANK = 16
WOODBURY_CHUNK = 8192  # blocks per batched Woodbury step (bounds its temporaries to a few MB)


def _available_ram() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None (no check)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _blocks(t: Tensor, block: int) -> Tensor:
    """`t` flattened, zero-padded to a multiple of `block`, as (blocks, block) float32."""
    flat = t.detach().reshape(-1).float()
    pad = (-flat.numel()) % block
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, block)


def update_rank(block: int) -> int:
    """Gradients per Woodbury update at block size B: UPDATE_RANK, or B // 3 for small blocks (their memory)."""
    return max(1, min(UPDATE_RANK, block // 3))


class BlockFisherInverse:
    """The inverse of a block-diagonal empirical Fisher over named tensors, built gradient by gradient."""

    def __init__(self, shapes: dict[str, torch.Size], block: int = DEFAULT_BLOCK, num_grads: int = DEFAULT_GRADIENTS,
                 damp: float = DEFAULT_DAMP, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, rank: int | None = None) -> None:
        rank = update_rank(block) if rank is None else rank
        if block < 1 or num_grads < 1 or damp <= 0 or rank < 1:
            raise SmcBenchError(f"oBERT needs block >= 1, gradients >= 1, dampening > 0 and update rank >= 1; got "
                                f"block {block}, gradients {num_grads}, dampening {damp}, rank {rank}")
        self.block, self.num_grads, self.damp = block, num_grads, damp
        self.rank = min(rank, num_grads)
        self.shapes = dict(shapes)
        self.added = 0
        eye = torch.eye(block, device=device, dtype=dtype) / damp
        self._inverse: dict[str, Tensor] = {}
        for name, shape in self.shapes.items():
            blocks = -(-shape.numel() // block)
            self._inverse[name] = eye.expand(blocks, block, block).clone()
        self._pending: dict[str, list[Tensor]] = {name: [] for name in self.shapes}

    @property
    def inverse(self) -> dict[str, Tensor]:
        """The block inverses, (blocks, B, B) per tensor, with every gradient added so far folded in."""
        self._flush()
        return self._inverse

    @staticmethod
    def memory_bytes(numel: int, block: int = DEFAULT_BLOCK, bytes_per_float: int = 4) -> int:
        """The inverses' size for `numel` weights (padding aside), d·B floats, and the gradients waiting for
        the next rank-k update, d·k floats."""
        return numel * (block + update_rank(block)) * bytes_per_float

    @staticmethod
    def check_fits(numel: int, block: int, device: torch.device | str = "cpu") -> None:
        """Refuse before any work when the inverses cannot fit in the device's free memory (with a margin for
        the gradients and temporaries), naming what to change."""
        device = torch.device(device)
        need = BlockFisherInverse.memory_bytes(numel, block)
        if device.type == "cuda":
            free = torch.cuda.mem_get_info(device)[0]
        else:
            free = _available_ram()
        if free is not None and need > 0.8 * free:
            floats = int(0.8 * free / (numel * 4))
            fit = max([b for b in range(1, block) if b + update_rank(b) <= floats], default=1)
            raise SmcBenchError(f"oBERT's Fisher inverses for {numel:,} weights at block size {block} need "
                                f"{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB is free on {device}: use "
                                f"--obert-block {fit} or smaller (memory is B + min(16, B // 3) floats per weight), "
                                "or prune fewer tensors (--preset encoder, --include)")

    @torch.no_grad()
    def add(self, grads: dict[str, Tensor], masks: dict[str, Tensor] | None = None) -> None:
        """One gradient (of a single example or a small batch) per tensor: one Woodbury step per block. `masks`:
        the current masks; pruned coordinates get zero gradient (the Fisher given that they stay zero)."""
        for name, inv in self._inverse.items():
            grad = grads[name] if masks is None else grads[name] * masks[name]
            self._pending[name].append(_blocks(grad, self.block).to(inv.dtype))
        self.added += 1
        if self.added % self.rank == 0:
            self._flush()

    @torch.no_grad()
    def _flush(self) -> None:
        """Fold the waiting gradients G (k of them) into every block: with F' = F + GGᵀ/m,
        F'⁻¹ = F⁻¹ − U (m·I + GᵀU)⁻¹ Uᵀ, U = F⁻¹G. The k×k matrix is symmetric positive definite (its eigenvalues
        are at least m) and inverted in float64."""
        for name, inv in self._inverse.items():
            pending = self._pending[name]
            if not pending:
                continue
            g_all = torch.stack(pending, dim=2)  # (blocks, B, k)
            pending.clear()
            for a in range(0, inv.shape[0], WOODBURY_CHUNK):
                f, g = inv[a:a + WOODBURY_CHUNK], g_all[a:a + WOODBURY_CHUNK]
                u = torch.bmm(f, g)  # F⁻¹G, (blocks, B, k)
                small = torch.bmm(g.transpose(1, 2), u).double()  # GᵀF⁻¹G, (blocks, k, k)
                small.diagonal(dim1=1, dim2=2).add_(self.num_grads)
                small = torch.linalg.inv(small).to(f.dtype)
                f.baddbmm_(torch.bmm(u, small), u.transpose(1, 2), alpha=-1.0)

    def diagonal(self, name: str) -> Tensor:
        """[F⁻¹]_qq for every weight of `name`, flat (padding dropped)."""
        numel = self.shapes[name].numel()
        return self.inverse[name].diagonal(dim1=1, dim2=2).reshape(-1)[:numel]

    def saliency(self, name: str, weight: Tensor, index: Index = slice(None)) -> Tensor:
        """ρ = w² / (2 [F⁻¹]_qq) for `weight.reshape(-1)[index]`."""
        w = weight.detach().reshape(-1)[index].float()
        return w.square() / (2.0 * self.diagonal(name)[index].float())

    @torch.no_grad()
    def update_weights(self, params: dict[str, nn.Parameter], masks: dict[str, Tensor],
                       original: dict[str, Tensor] | None = None) -> int:
        """The OBS update of every block for the weights its mask prunes; the pruned weights end exactly 0.
        `original`: the weights before the mask zeroed them (`Sparsifier.prune` does), default the params.
        Returns the number of blocks whose update failed the stability guard (only masked)."""
        unstable = 0
        for name, inv in self.inverse.items():  # (the property: every gradient folded in)
            p = params[name]
            w = _blocks(p if original is None else original[name], self.block).to(inv.dtype)
            pruned = ~_blocks(masks[name], self.block).bool()
            numel = p.numel()
            if w.numel() > numel:  # padding: "pruned" zeros that are decoupled from the rest (zero gradient)
                pruned.view(-1)[numel:] = True
            w_q = w * pruned
            active = w_q.abs().sum(1).nonzero().squeeze(1)  # blocks with something to remove
            delta = torch.zeros_like(w, dtype=torch.float64)
            for a in range(0, active.numel(), SOLVE_CHUNK):
                rows = active[a:a + SOLVE_CHUNK]
                f, q, wq = inv[rows].double(), pruned[rows], w_q[rows].double()
                both = q.unsqueeze(2) & q.unsqueeze(1)
                # F⁻¹[Q, Q] padded with the identity outside Q: one batched solve gives (F⁻¹[Q,Q])⁻¹ w_Q on Q, 0 off it.
                eye = torch.eye(self.block, dtype=f.dtype, device=f.device).expand_as(f)
                sub = torch.where(both, f, eye)
                x = torch.linalg.solve(sub, wq.unsqueeze(-1))
                d = -torch.bmm(f, x).squeeze(-1)
                bound = OBS_GUARD * w[rows].abs().amax(1, keepdim=True).double()
                bad = ~(d.masked_fill(q, 0.0).abs() <= bound).all(1)  # also catches NaN and inf
                unstable += int(bad.sum())
                delta[rows] = d.masked_fill(bad.unsqueeze(1), 0.0)
            new = (w.double() + delta).masked_fill(pruned, 0.0)
            p.copy_(new.reshape(-1)[:numel].view_as(p).to(p.dtype))
        return unstable


def iter_gradients(params: dict[str, nn.Parameter], loss: Callable[[Any], Tensor], batches: Iterable[Any],
                   count: int) -> Iterable[dict[str, Tensor]]:
    """The gradient of `loss(batch)` for each of the first `count` batches, one at a time. Through
    `torch.autograd.grad`: no parameter's `.grad` is touched (a pruning step inside training must not leave
    gradients behind for the next update)."""
    names, tensors = list(params), list(params.values())
    seen = 0
    # islice: never draws a batch beyond `count` (a shared iterator's next step starts right after this one's)
    for batch in islice(batches, count):
        grads = torch.autograd.grad(loss(batch), tensors, allow_unused=True)
        yield {n: g if g is not None else torch.zeros_like(p) for n, p, g in zip(names, tensors, grads, strict=True)}
        seen += 1
    if seen < count:
        raise SmcBenchError(f"oBERT asked for {count} gradients but the training data gave {seen} batches: lower "
                            "obert_gradients or the batch size")


def collect_fisher(params: dict[str, nn.Parameter], loss: Callable[[Any], Tensor], batches: Iterable[Any],
                   num_grads: int = DEFAULT_GRADIENTS, block: int = DEFAULT_BLOCK, damp: float = DEFAULT_DAMP,
                   masks: dict[str, Tensor] | None = None) -> BlockFisherInverse:
    """The block Fisher inverse of `params` from `num_grads` gradients of `loss` over `batches` (masked by
    `masks`, the current masks, when weights are already pruned)."""
    first = next(iter(params.values()))
    fisher = BlockFisherInverse({n: p.shape for n, p in params.items()}, block, num_grads, damp, first.device)
    for grads in iter_gradients(params, loss, batches, num_grads):
        fisher.add(grads, masks)
    return fisher


@register_score("obert")
class OBertScore(Score):
    """oBERT's saliency w² / (2 [F⁻¹]_qq). Built from a context's loss and batches (its `num_batches` gradients,
    default block and dampening); the method that prunes with it then calls `fisher.update_weights`."""

    def __init__(self, fisher: BlockFisherInverse) -> None:
        self.fisher = fisher

    @classmethod
    def from_context(cls, context: ScoreContext) -> OBertScore:
        if context.loss is None or context.batches is None:
            raise SmcBenchError("the obert score needs gradients: give the pruning step a loss and training batches")
        return cls(collect_fisher(context.params, context.loss, context.batches(), context.num_batches,
                                  masks=context.masks))

    def flat(self, name: str, weight: Tensor, index: Index) -> Tensor:
        return self.fisher.saliency(name, weight, index)
