"""Post-training layer-wise pruning from calibration activations: Wanda and SparseGPT, unstructured or N:M.

Both prune each Linear layer to the same sparsity (their setting: no global ranking across layers). Exact counts:
a layer of N weights prunes round(s·N) (as the `uniform` allocation), spread over rows (Wanda) or column blocks
(SparseGPT) so that the total is exact. Weights already pruned stay pruned and count first. N:M keeps the N best of
every M consecutive input weights of a row, as `Sparsifier.prune(..., "N:M")`.

- Wanda (Sun et al. 2023): score |W_ij| · ‖X_j‖₂, compared within each output row; no weight update.
- SparseGPT (Frantar & Alistarh 2023): H = XᵀX/n + λI (λ = 1 % of mean diag), the upper Cholesky factor U of H⁻¹;
  column blocks of 128: in each, the mask takes the lowest w² / U_cc² (adaptive mask selection), then column by
  column the pruned weights are removed with the OBS update of the columns to the right (lazy within the block, one
  matrix product for the rest). Dead inputs (H_jj = 0) get H_jj = 1 and their weights are zeroed before the sweep, as
  in the reference implementation (IST-DASLab/sparsegpt). Differences from it, on purpose: exactly round(s·N)
  weights per layer (its per-block threshold `sort(...)[int(n·s)]` with `<=` prunes one more per block, and more at
  ties), shared out over the blocks so the layer's total is exact.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from smcbench.errors import SmcBenchError
from smcbench.sparsity.allocation import Slot, lowest_k, prune_n_m, target_count
from smcbench.sparsity.calibration import Hessian, SquaredNorms
from smcbench.sparsity.scores import Index, Score

SPARSEGPT_BLOCK = 128
SPARSEGPT_DAMP = 0.01


class _Fixed(Score):
    """Precomputed scores of one tensor (to reuse the engine's N:M selection)."""

    def __init__(self, scores: Tensor) -> None:
        self.scores = scores

    def flat(self, name: str, weight: Tensor, index: Index) -> Tensor:
        return self.scores.reshape(-1)[index]


def _per_row_counts(k: int, rows: int) -> Tensor:
    """k spread over rows as evenly as possible (the first k mod rows rows take one more)."""
    counts = torch.full((rows,), k // rows, dtype=torch.int64)
    counts[: k % rows] += 1
    return counts


def prune_rows(scores: Tensor, mask: Tensor, sparsity: float) -> None:
    """Prune round(s·N) weights of a (rows, cols) tensor, the lowest scores of each row, evenly over the rows."""
    scores = scores.float().masked_fill(~mask, -math.inf)  # already pruned: first
    rows, cols = scores.shape
    counts = _per_row_counts(target_count(sparsity, scores.numel()), rows).to(scores.device)
    order = torch.sort(scores, dim=1, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(cols, device=scores.device).expand(rows, cols))
    mask.logical_and_(rank >= counts.unsqueeze(1))


def wanda_scores(weight: Tensor, stats: SquaredNorms) -> Tensor:
    return weight.detach().abs().float() * stats.sum_sq.sqrt().float().unsqueeze(0)


def wanda_prune_layer(weight: nn.Parameter, mask: Tensor, stats: SquaredNorms, sparsity: float,
                      nm: tuple[int, int] | None = None) -> None:
    scores = wanda_scores(weight, stats)
    if nm is None:
        prune_rows(scores, mask, sparsity)
    else:
        prune_n_m([Slot("weight", weight, mask)], _Fixed(scores), *nm)


@torch.no_grad()
def sparsegpt_prune_layer(weight: nn.Parameter, mask: Tensor, stats: Hessian, sparsity: float,
                          nm: tuple[int, int] | None = None, block: int = SPARSEGPT_BLOCK,
                          damp: float = SPARSEGPT_DAMP) -> None:
    """Prune one Linear weight (rows, cols) in place: narrows `mask`, updates the kept weights."""
    W = weight.detach().float().clone()
    rows, cols = W.shape
    if nm is not None and cols % nm[1]:
        raise SmcBenchError(f"SparseGPT {nm[0]}:{nm[1]}: a layer with {cols} inputs is not a multiple of {nm[1]}")
    H = stats.matrix().float().clone()
    # Dead inputs (always zero: a unit that never fires, a padding feature): their weights change no output, so
    # they are zeroed first, as the reference does; they then score 0 and are the first pruned, never competing
    # with weights that matter.
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H.diagonal().add_(damp * H.diagonal().mean())
    try:
        U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except torch.linalg.LinAlgError as err:
        raise SmcBenchError(f"SparseGPT: the layer Hessian is not positive definite ({err}): use more calibration "
                            "batches or a larger dampening") from err
    if nm is not None and block % nm[1]:
        raise SmcBenchError(f"SparseGPT {nm[0]}:{nm[1]}: the column block ({block}) must be a multiple of {nm[1]}")
    keep = mask.clone()
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        d = U1.diagonal()
        prune1 = ~keep[:, i1:i2]
        if nm is None:
            # This block's share of the layer's exact count (cumulative rounding: the shares sum to the total).
            k = target_count(sparsity, rows * i2) - target_count(sparsity, rows * i1)
            scores = (W1.square() / d.square().unsqueeze(0)).masked_fill(prune1, -math.inf)
            prune1 = lowest_k(scores, max(k, int(prune1.count_nonzero())))
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                scores = (W1[:, i:i + m].square() / d[i:i + m].square().unsqueeze(0))
                scores = scores.masked_fill(prune1[:, i:i + m], -math.inf)
                lowest = torch.sort(scores, dim=1, stable=True).indices[:, : m - n]
                prune1[:, i:i + m].scatter_(1, lowest, True)
            w = W1[:, i]
            q = w.masked_fill(prune1[:, i], 0.0)
            err = (w - q) / d[i]
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            W1[:, i] = q
            Err1[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
        keep[:, i1:i2] = ~prune1
    mask.copy_(keep)
    weight.copy_((W * keep).to(weight.dtype))
