"""One batched evaluation helper for every family: scoring (multiple choice, classification) or generation
(equation trees, translations) goes through the same length-sorted, no-grad batching."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

EVAL_BATCH = 32


@torch.no_grad()
def batched_outputs(
    model: nn.Module,
    examples: Sequence[Any],
    collate: Callable[[list[Any]], dict[str, torch.Tensor]],
    step: Callable[[nn.Module, dict[str, torch.Tensor]], Sequence[Any]],
    length: Callable[[Any], int],
    batch_size: int = EVAL_BATCH,
) -> list[Any]:
    """`step(model, batch)` over batches of examples of similar length (less padding); returns one output per
    example, in the order of `examples`. The model is in eval mode meanwhile and its mode restored after; batches
    are moved to the model's device."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: length(examples[i]))
    out: list[Any] = [None] * len(examples)
    try:
        for a in range(0, len(order), batch_size):
            chunk = order[a:a + batch_size]
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in chunk]).items()}
            results = step(model, batch)
            if len(results) != len(chunk):
                raise ValueError(f"evaluation step returned {len(results)} outputs for a batch of {len(chunk)}")
            for i, result in zip(chunk, results, strict=True):
                out[i] = result
    finally:
        model.train(was_training)
    return out
