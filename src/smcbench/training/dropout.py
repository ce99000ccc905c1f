"""Dropout's random stream on CPU, drawn fast: the training loop's `dropout_rng`.

torch draws a CPU dropout mask serially with mt19937 (`bernoulli_`, about 6 ns an element on the 2-core development
machine): the largest cost of a training step that is not a matrix product (12 % of a MiniLM step on CSQA, 32 % of
esm-tiny's on long proteins, where attention's probabilities are dropped). Two ways out:

- "torch" (the default) keeps torch's masks and draws them faster (`TorchStreamDropout`): torch's own dropout runs,
  and its one `bernoulli_` is filled here from the same generator state with the same mt19937 words, vectorised
  and in cache-sized tiles (mt19937.c, built at first use; ~0.56 ns a draw on one thread), the generator left
  where torch's kernel leaves it, and dropout's division of the mask by the keep rate done in the same pass.
  Same masks, same results, bit for bit, which a check against torch's kernel confirms once per process before
  it is used: where it differs (a torch build may draw bernoulli_ another way, e.g. through MKL on Intel CPUs)
  or no C compiler is found (or SMCBENCH_NATIVE=0), torch draws.
- "pcg64" draws 16 random bits an element with numpy's PCG64 instead, in parallel: about 0.7 ns an element for the
  whole multiplier. The masks differ from torch's, so results differ: an option named in a run's identity.

The models call `F.dropout` (also through `nn.Dropout`) and pass `dropout_p` to `F.scaled_dot_product_attention`,
whose CPU kernel draws its own mask; a TorchFunctionMode active during the forward pass takes both calls.
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import functools
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from smcbench import native

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
    plain = rows_open(attn_mask)  # before the mask's conversion below
    if is_causal:
        attn_mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
    if attn_mask is not None:  # added, as a float mask: its backward passes the gradient through untouched
        if attn_mask.dtype == torch.bool:
            blocked = torch.zeros(attn_mask.shape, dtype=scores.dtype, device=scores.device)
            attn_mask = blocked.masked_fill_(~attn_mask, -math.inf)
        scores = scores.add_(attn_mask)
    probs = scores.softmax(-1) if plain else torch._safe_softmax(scores, -1)
    return _dropout(probs, dropout_p) @ value


def rows_open(attn_mask: Tensor | None) -> bool:
    """Whether every query may attend to some key under `attn_mask` (bool: True attends; float: added; causal or
    none: always). Then torch's `_safe_softmax`, which zeroes a row of scores that are all -inf, is `softmax`
    itself, and a plain softmax skips its three passes over the scores (T² each). Scores are finite products plus
    the mask, so a row is all -inf only where the mask's row is (an overflowing product, a diverged model, aside)."""
    if attn_mask is None:
        return True
    if attn_mask.dtype == torch.bool:
        return bool(attn_mask.any(-1).all())
    return not bool(torch.isneginf(attn_mask).all(-1).any())


class _DropoutCalls(TorchFunctionMode, abc.ABC):
    """While active, dropout in training (F.dropout, and scaled_dot_product_attention with dropout_p > 0) goes to
    `draw`; every other call passes through."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's protocol)
        kwargs = kwargs or {}
        if func is F.dropout or (func is F.scaled_dot_product_attention and _float(args, kwargs, 4, "dropout_p") > 0):
            return self.draw(func, args, kwargs)
        return func(*args, **kwargs)

    @abc.abstractmethod
    def draw(self, func, args: tuple, kwargs: dict) -> Tensor:  # noqa: ANN001
        """The dropout call `func(*args, **kwargs)`, computed with this mode's masks."""


class FastDropout(_DropoutCalls):
    """dropout_rng "pcg64": masks from `keep_scale`, attention in its math kernel's steps around them."""

    def draw(self, func, args: tuple, kwargs: dict) -> Tensor:  # noqa: ANN001
        return (_dropout if func is F.dropout else _attention)(*args, **kwargs)


class TorchStreamDropout(_DropoutCalls):
    """dropout_rng "torch", drawn fast: torch's dropout and attention run as they are, their bernoulli_ filled by
    `mt19937_bernoulli_` (torch's values; see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        # rows_open per mask: every layer of a forward passes the same mask, checked once (held: its id stays its)
        self.open: dict[int, tuple[Tensor, int, bool]] = {}

    def draw(self, func, args: tuple, kwargs: dict) -> Tensor:  # noqa: ANN001
        plain = False
        if func is F.scaled_dot_product_attention:
            mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
            plain = self.rows_open(mask)
        with _TorchBernoulli(plain_softmax=plain):
            return func(*args, **kwargs)

    def rows_open(self, mask: Tensor | None) -> bool:
        if mask is None:
            return True
        held = self.open.get(id(mask))
        if held is None or held[0] is not mask or held[1] != mask._version:
            held = self.open[id(mask)] = (mask, mask._version, rows_open(mask))
        return held[2]


def dropout_mode(rng: str, device: torch.device) -> contextlib.AbstractContextManager:
    """What the training loop's forward runs in for `rng` on `device`."""
    if rng == "pcg64":
        return FastDropout()
    if device.type == "cpu" and torch_stream_available():
        return TorchStreamDropout()
    return contextlib.nullcontext()


TORCH_KERNEL = "torch's masks, torch's kernel"


def masks_drawn_by(rng: str, device: torch.device) -> str:
    """How the training loop draws dropout masks for `rng` on `device`, in words (the benchmarks print it)."""
    mode = type(dropout_mode(rng, device))
    return {FastDropout: "pcg64 masks", TorchStreamDropout: "torch's masks, fast stream"}.get(mode, TORCH_KERNEL)


class _TorchBernoulli(TorchDispatchMode):
    """Fills bernoulli_ with `mt19937_bernoulli_`; with `plain_softmax` (every row of the attention it runs
    in is open: `rows_open`), computes `_safe_softmax` as the `_softmax` it then equals, values and backward.

    A draw is written when the next operation comes (or the mode ends): if that is dropout's division of the mask
    by the keep rate, the draw writes the divided values in the same pass; anything else first sees the mask as
    bernoulli_ leaves it. The mode is entered around one call of torch's dropout or attention, whose C++ runs no
    Python between two operations, so nothing reads the mask or the generator before the draw is written; a
    generator moved in between (which would have drawn after the mask) is an error, not another mask."""

    def __init__(self, plain_softmax: bool = False) -> None:
        super().__init__()
        self.plain_softmax = plain_softmax
        self.drawn: tuple | None = None  # (mask, p, generator, its state) of a bernoulli_ not written yet

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's protocol)
        kwargs = kwargs or {}
        if self.drawn is not None:
            if func is torch.ops.aten.div_.Scalar and _same(args[0], self.drawn[0]) and not kwargs:
                return self._write(divisor=args[1])
            self._write()
        if func is torch.ops.aten.bernoulli_.float and _fillable(args[0]):
            generator = kwargs.get("generator")
            state = (torch.default_generator if generator is None else generator).get_state()
            self.drawn = (args[0], args[1] if len(args) > 1 else 0.5, generator, state)
            return args[0]
        if func is torch.ops.aten._safe_softmax.default and self.plain_softmax and len(args) == 2 and not kwargs:
            return torch.ops.aten._softmax.default(args[0], args[1], False)
        return func(*args, **kwargs)

    def _write(self, divisor: float | None = None) -> Tensor:
        mask, p, generator, state = self.drawn
        self.drawn = None
        if not torch.equal((torch.default_generator if generator is None else generator).get_state(), state):
            raise RuntimeError("a random draw came between dropout's bernoulli_ and its mask being written")
        return mt19937_bernoulli_(mask, p, generator, divisor)

    def __exit__(self, *exc: object) -> None:
        try:
            if self.drawn is not None:
                self._write()
        finally:
            super().__exit__(*exc)


def _same(a: object, b: Tensor) -> bool:
    return isinstance(a, Tensor) and a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.dtype == b.dtype


def _fillable(t: Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype in _FILL and t.is_contiguous()


_MT_N = 624
_C = ctypes
_FILL = {torch.float32: "smc_mt_bernoulli_f32", torch.float64: "smc_mt_bernoulli_f64"}
_MT_FUNCTIONS = {name: (_C.c_int64, [_C.c_void_p, _C.c_int64, _C.c_int64, _C.c_uint64, _C.c_double, _C.c_void_p])
                 for name in _FILL.values()}
# torch's CPU generator state (CPUGeneratorImplState): `left` (int32) at byte 8, `next` (uint64) at 16, then the
# 624 state words, each stored in a uint64.
_LEFT, _NEXT, _WORDS = 8, 16, 24


def _mt_library() -> ctypes.CDLL | None:
    return native.load(Path(__file__).with_name("mt19937.c"), _MT_FUNCTIONS)


def mt19937_bernoulli_(out: Tensor, p: float, generator: torch.Generator | None = None,
                       divisor: float | None = None) -> Tensor:
    """`out.bernoulli_(p, generator=generator)` as torch's serial CPU kernel draws it: draw j keeps where the 53 low
    bits of the mt19937 words 2j (high) and 2j + 1 (low), over 2⁵³, are below p; the generator ends where the kernel
    leaves it. With `divisor`, then `out.div_(divisor)` in the same pass (kept: 1 / divisor in out's dtype).
    `out`: a contiguous float32 or float64 CPU tensor; needs the compiled helper (`torch_stream_available`)."""
    n = out.numel()
    gen = torch.default_generator if generator is None else generator
    # a divisor that is not positive in out's dtype makes 0 / divisor nonzero (NaN, or -0.0): torch divides
    if n == 0 or not 0 <= p <= 1 or (divisor is not None and not float(torch.tensor(divisor, dtype=out.dtype)) > 0):
        out.bernoulli_(p, generator=generator)  # nothing drawn, or torch's own error
        return out if divisor is None else out.div_(divisor)
    state = gen.get_state()
    raw = state.numpy()
    left, following = int(raw[_LEFT:_LEFT + 4].view(np.int32)[0]), int(raw[_NEXT:_NEXT + 8].view(np.uint64)[0])
    stored = raw[_WORDS:_WORDS + 8 * _MT_N].view(np.uint64)
    words = stored.astype(np.uint32)
    pos = _MT_N if left == 1 else following  # left == 1: the state's words are used up (or never twisted)
    fill = getattr(_mt_library(), _FILL[out.dtype])
    kept = 1.0 if divisor is None else float(torch.ones((), dtype=out.dtype).div_(divisor))  # torch's own division
    pos = fill(words.ctypes.data, pos, n, math.ceil(p * 2.0**53), kept, out.data_ptr())  # p·2⁵³: exact in a double
    stored[:] = words
    raw[_NEXT:_NEXT + 8].view(np.uint64)[0] = pos
    raw[_LEFT:_LEFT + 4].view(np.int32)[0] = _MT_N + 1 - pos
    gen.set_state(state)
    return out


@functools.cache
def torch_stream_available() -> bool:
    """Whether `mt19937_bernoulli_` is built here and draws what this torch's bernoulli_ draws: checked once per
    process from several generator positions (fresh, mid-state, at a state's end), probabilities and dtypes."""
    if _mt_library() is None:
        return False
    gen = torch.Generator()
    for seed, used, n, p, dtype in ((1, 0, 1000, 0.9, torch.float32), (2, 37, 70001, 0.5, torch.float64),
                                    (3, 620, 1000, 0.1, torch.float32), (4, 623, 1, 0.9, torch.float32)):
        gen.manual_seed(seed)
        if used:
            torch.randint(0, 2, (used,), generator=gen)  # each draws one word
        for divisor in (None, p):
            before = gen.get_state()
            expected = torch.empty(n, dtype=dtype).bernoulli_(p, generator=gen)
            expected = expected if divisor is None else expected.div_(divisor)
            after = gen.get_state()
            gen.set_state(before)
            got = mt19937_bernoulli_(torch.empty(n, dtype=dtype), p, gen, divisor)
            if not (torch.equal(got, expected) and torch.equal(gen.get_state(), after)):
                return False
    return True


def _float(args: tuple, kwargs: dict, position: int, name: str) -> float:
    return float(args[position] if len(args) > position else kwargs.get(name, 0.0))
