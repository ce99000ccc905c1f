"""Dropout with a fast random stream on CPU: the training loop's `dropout_rng` option.

torch draws a CPU dropout mask serially with mt19937 (`bernoulli_`, about 6 ns an element on the 2-core development
machine): the largest cost of a training step that is not a matrix product (12 % of a MiniLM step on CSQA, 32 % of
esm-tiny's on long proteins, where attention's probabilities are dropped). "pcg64" draws 16 random bits an element
with numpy's PCG64 instead, in parallel: about 0.7 ns an element for the whole multiplier. The masks differ from
torch's, so results differ: it is an option named in a run's identity, never a default.

The models call `F.dropout` (also through `nn.Dropout`) and pass `dropout_p` to `F.scaled_dot_product_attention`,
whose CPU kernel draws its own mask; a TorchFunctionMode active during the forward pass takes both calls, and
computes attention in the math kernel's steps (what CPU attention with dropout runs anyway) with the mask from here.
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

DROPOUT_RNGS = ("torch", "pcg64")
_LEVELS = 1 << 16
_BLOCK = 1 << 18


def keep_scale(shape: torch.Size | tuple[int, ...], p: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """The dropout multiplier: 1/(1 − p′) where an element is kept, 0 where it is dropped, with p′ = p rounded to a
    multiple of 2⁻¹⁶ (0.1 → 0.100006; at most 1 − 2⁻¹⁶), the exact drop rate of 16-bit draws, so the multiplier's
    mean is exactly 1.
    The seed comes from torch's generator: a run's seed and its checkpoints' random state cover these masks too.
    Blocks of 2¹⁸ elements, each its own PCG64 stream (seeded by the seed and the block's index), are drawn on
    torch's thread count in parallel: the mask does not depend on the thread count."""
    dropped = min(round(p * _LEVELS), _LEVELS - 1)
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    n = math.prod(shape)
    exact = np.float64 if dtype == torch.float64 else np.float32  # other dtypes: converted from float32 at the end
    scale = exact(_LEVELS / (_LEVELS - dropped))
    out = np.empty(n, dtype=exact)

    def block(a: int) -> None:  # the multiplier itself, in the thread: no bool mask for torch to convert after
        b = min(a + _BLOCK, n)
        raw = np.random.PCG64([seed, a // _BLOCK]).random_raw(-(-(b - a) // 4))  # four 16-bit draws in each
        np.multiply(np.greater_equal(raw.view(np.int16)[: b - a], dropped - _LEVELS // 2), scale, out=out[a:b])

    starts = range(0, n, _BLOCK)
    if len(starts) > 1 and torch.get_num_threads() > 1:
        list(_pool().map(block, starts))
    else:
        for a in starts:
            block(a)
    return torch.from_numpy(out).view(shape).to(dtype)


@functools.cache
def _pool() -> ThreadPoolExecutor:
    # numpy draws, compares and multiplies without the GIL: threads run the blocks on torch's cores
    return ThreadPoolExecutor(torch.get_num_threads(), thread_name_prefix="smcbench-dropout")


def _dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    if not training or p == 0:
        return input
    if p >= 1:
        return input.mul_(0) if inplace else input * 0
    scale = keep_scale(input.shape, p, input.dtype)
    return input.mul_(scale) if inplace else input * scale


def _attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
               is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> Tensor:
    """scaled_dot_product_attention as its math kernel computes it, the probabilities dropped by `_dropout`."""
    if enable_gqa:
        key = key.repeat_interleave(query.size(-3) // key.size(-3), -3)
        value = value.repeat_interleave(query.size(-3) // value.size(-3), -3)
    scale = 1 / math.sqrt(query.size(-1)) if scale is None else scale
    scores = (query * scale) @ key.transpose(-2, -1)
    every_row_open = True  # then a plain softmax; else torch's safe one (a row with every key masked: zeros)
    if is_causal:
        attn_mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
    if attn_mask is not None:  # added, as a float mask: its backward passes the gradient through untouched
        if attn_mask.dtype == torch.bool:
            every_row_open = bool(attn_mask.any(-1).all())
            blocked = torch.zeros(attn_mask.shape, dtype=scores.dtype, device=scores.device)
            attn_mask = blocked.masked_fill_(~attn_mask, -math.inf)
        else:
            every_row_open = False
        scores = scores.add_(attn_mask)
    probs = scores.softmax(-1) if every_row_open else torch._safe_softmax(scores, -1)
    return _dropout(probs, dropout_p) @ value


class FastDropout(TorchFunctionMode):
    """While active, dropout in training (F.dropout, and scaled_dot_product_attention's dropout_p) draws its
    masks with `keep_scale`; every other call passes through."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's protocol)
        kwargs = kwargs or {}
        if func is F.dropout:
            return _dropout(*args, **kwargs)
        if func is F.scaled_dot_product_attention and _float(args, kwargs, 4, "dropout_p") > 0:
            return _attention(*args, **kwargs)
        return func(*args, **kwargs)


def _float(args: tuple, kwargs: dict, position: int, name: str) -> float:
    return float(args[position] if len(args) > position else kwargs.get(name, 0.0))
