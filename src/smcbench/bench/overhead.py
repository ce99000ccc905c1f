"""`smc-bench bench overhead`: a training step with masks enforced vs the same step dense.

MiniLM multiple choice (8 questions × 5 choices × 64 tokens, fused AdamW), the two models stepped alternately so that
machine noise hits both alike; medians of the step times.
"""

from __future__ import annotations

import statistics
import time

import torch

from smcbench.models import load_pretrained
from smcbench.sparsity import Sparsifier


def _batch(vocab: int, questions: int, choices: int, length: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (questions, choices, length), generator=gen)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.randint(0, choices, (questions,), generator=gen),
    }


def run(model: str = "minilm", steps: int = 10, warmup: int = 2, sparsity: float = 0.5,
        questions: int = 8, choices: int = 5, length: int = 64) -> dict:
    torch.manual_seed(0)
    dense = load_pretrained(model)
    sparse = load_pretrained(model)
    sparse.load_state_dict(dense.state_dict())
    batch = _batch(dense.config.vocab_size, questions, choices, length)
    # Fused AdamW, as the training loop uses: 5x faster on CPU than the foreach default, whose sqrt is slow on
    # the exact zeros that pruned weights' moments hold (that alone would cost a sparse model +30 ms a step).
    opt_dense = torch.optim.AdamW(dense.parameters(), lr=5e-5, weight_decay=0.01, fused=True)
    opt_sparse = torch.optim.AdamW(sparse.parameters(), lr=5e-5, weight_decay=0.01, fused=True)
    sparsifier = Sparsifier(sparse)
    sparsifier.attach_optimizer(opt_sparse)
    sparsifier.prune(sparsity)
    dense.train()
    sparse.train()

    def step(model, opt, sp):
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        if sp is not None:
            sp.mask_gradients()
        opt.step()
        if sp is not None:
            sp.after_step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    dense_times, masked_times = [], []
    for i in range(warmup + steps):
        # Alternate which goes first, so neither always runs on a warmer cache.
        order = [("d", dense, opt_dense, None), ("m", sparse, opt_sparse, sparsifier)]
        for tag, m, o, sp in order if i % 2 == 0 else order[::-1]:
            t = step(m, o, sp)
            if i >= warmup:
                (dense_times if tag == "d" else masked_times).append(t)
    pruned_nonzero = sum(
        int(torch.count_nonzero(p.detach()[~sparsifier.masks[n]])) for n, p in sparsifier.params.items()
    )
    dense_s = statistics.median(dense_times)
    masked_s = statistics.median(masked_times)
    return {
        "dense_step_s": dense_s,
        "masked_step_s": masked_s,
        "ratio": masked_s / dense_s,
        "steps": steps,
        "sparsity": sparsifier.sparsity(),
        "pruned_weights_nonzero": pruned_nonzero,
    }


def render(out: dict, model: str, steps: int) -> str:
    return "\n".join([
        f"training step, {model}, 8 x 5 x 64 tokens, fused AdamW, median of {steps} interleaved steps",
        f"  dense   {out['dense_step_s']:.3f} s",
        f"  masked  {out['masked_step_s']:.3f} s  (sparsity {out['sparsity']:.3f}, "
        f"pruned weights nonzero after training: {out['pruned_weights_nonzero']})",
        f"  ratio   {out['ratio']:.3f}x",
    ])
