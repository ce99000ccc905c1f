"""The residue-composition baseline: how much of a thermostability label the 20 amino-acid frequencies alone tell.

Thermophiles' proteins differ from mesophiles' in composition (more charged residues, fewer polar uncharged
ones), so a linear classifier on the frequencies scores high on HotProtein: 0.82 on HP-S2C2 fold 0 with whole
sequences, as high as AntiBERTy fine-tuned. A protein model that does not beat it has learned nothing a sparse
model can be seen to lose: mean pooling over the residual stream keeps the composition even when every pruned
attention and feed-forward weight is zero. Every protein run records the baseline beside its accuracy
(`composition_accuracy`), computed on the residues the model sees (the same cut).

The classifier: multinomial logistic regression on the standardised frequencies of the training pool, L2 weight
1e-3 on the weights (not the biases), fitted to convergence by L-BFGS in float64: deterministic, under a second.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
L2 = 1e-3


def frequencies(sequences: Sequence[str]) -> torch.Tensor:
    """[n, 20] share of each standard residue in each sequence (other letters count in the length only)."""
    rows = [[s.count(a) / max(1, len(s)) for a in RESIDUES] for s in sequences]
    return torch.tensor(rows, dtype=torch.float64).reshape(len(sequences), len(RESIDUES))


def composition_predictions(train: Sequence[str], train_labels: Sequence[int], test: Sequence[str],
                            classes: int) -> list[int]:
    """The baseline's predicted class for each test sequence, fitted on the training sequences only."""
    x, y = frequencies(train), torch.tensor(list(train_labels))
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    weight = torch.zeros(len(RESIDUES), classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + L2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return ((frequencies(test) - mean) / std @ weight + bias).argmax(-1).tolist()
