"""The loop's dropout_rng (training.dropout): torch's masks drawn fast, and the pcg64 option."""

import contextlib
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.test_training import Regression, collate, data, weights
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode

from smcbench.training import TrainConfig, dropout, train
from smcbench.training.dropout import FastDropout, TorchStreamDropout, keep_scale, mt19937_bernoulli_

needs_stream = pytest.mark.skipif(not dropout.torch_stream_available(), reason="no C compiler here (or torch draws "
                                  "bernoulli_ another way, e.g. with MKL on Intel): torch's own kernel draws the masks")


@needs_stream
@given(n=st.integers(0, 3000), p=st.floats(0.0, 1.0), used=st.integers(0, 1300), double=st.booleans(),
       seed=st.integers(0, 2**31))
@settings(max_examples=60, deadline=None)
def test_mt19937_bernoulli_draws_what_torchs_kernel_draws_and_leaves_the_generator_where_it_does(n, p, used, double,
                                                                                                seed):
    gen = torch.Generator().manual_seed(seed)
    torch.randint(0, 2, (used,), generator=gen)  # one word each: every position in and across states
    before = gen.get_state()
    dtype = torch.float64 if double else torch.float32
    expected = torch.empty(n, dtype=dtype).bernoulli_(p, generator=gen)
    after = gen.get_state()
    gen.set_state(before)
    assert torch.equal(mt19937_bernoulli_(torch.empty(n, dtype=dtype), p, gen), expected)
    assert torch.equal(gen.get_state(), after)
    if 0 < p:  # with dropout's next step, the division by the keep rate, in the same pass
        gen.set_state(before)
        got = mt19937_bernoulli_(torch.empty(n, dtype=dtype), p, gen, divisor=p)
        torch.testing.assert_close(got, expected.div_(p), rtol=0, atol=0, equal_nan=True)  # p → 0 in float32: NaN
        assert torch.equal(gen.get_state(), after)


@needs_stream
def test_mt19937_bernoulli_in_threads_is_torchs_draw():  # above _PARALLEL_FROM: chunks on torch's threads
    torch.manual_seed(4)
    before = torch.default_generator.get_state()
    expected = torch.empty(3, 70_001).bernoulli_(0.9)
    torch.default_generator.set_state(before)
    assert torch.equal(mt19937_bernoulli_(torch.empty(3, 70_001), 0.9), expected)


def _dropout_everywhere() -> list[torch.Tensor]:
    """Every way a model drops: F.dropout (float32, float64, in place), nn.Dropout and attention with each kind of
    mask; the outputs, gradients and the generator's state after."""
    torch.manual_seed(0)
    x = torch.randn(40, 25, 64, requires_grad=True)
    q = torch.randn(8, 4, 25, 16, requires_grad=True)
    blocked = torch.ones(8, 1, 25, 25, dtype=torch.bool)
    blocked[:4, ..., 20:] = False
    closed = blocked.clone()  # a query that may attend to nothing: torch's safe softmax gives it zeros
    closed[1, 0, 3] = False
    added = torch.randn(8, 1, 25, 25)
    added[2, 0, 5] = -torch.inf
    outputs = [F.dropout(x, 0.1, True), torch.nn.Dropout(0.2)(x * 2), F.dropout(x.double(), 0.5, True),
               F.scaled_dot_product_attention(q, q * 2, q, attn_mask=blocked, dropout_p=0.1),
               F.scaled_dot_product_attention(q, q, q, is_causal=True, dropout_p=0.3),
               F.scaled_dot_product_attention(q, q, q, attn_mask=torch.randn(8, 1, 25, 25), dropout_p=0.1),
               F.scaled_dot_product_attention(q, q, q, attn_mask=closed, dropout_p=0.1),
               F.scaled_dot_product_attention(q, q, q, attn_mask=added, dropout_p=0.1)]
    inplace = x.detach().clone()
    F.dropout(inplace, 0.1, True, inplace=True)
    sum(t.float().square().sum() for t in outputs).backward()
    return [*outputs, inplace, x.grad, q.grad, torch.default_generator.get_state()]


@needs_stream
def test_torch_stream_dropout_is_torchs_dropout_bit_for_bit():
    expected = _dropout_everywhere()
    with TorchStreamDropout():
        got = _dropout_everywhere()
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


@needs_stream
def test_a_draw_is_written_before_any_other_operation_sees_the_mask_and_when_the_mode_ends():
    def draws() -> list[torch.Tensor]:
        torch.manual_seed(8)
        first = torch.empty(1000).bernoulli_(0.3).add(1)  # the next operation is not dropout's division
        halved = torch.empty(1000).bernoulli_(0.3).div_(0.5)  # a division by another number than the keep rate
        last = torch.empty(1000).bernoulli_(0.3)  # nothing follows: written as the mode ends
        return [first, halved, last]

    expected = [*draws(), torch.default_generator.get_state()]
    with dropout._TorchBernoulli():
        got = draws()
    got.append(torch.default_generator.get_state())
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    # Python between the draw and its writing that moves the generator is refused (torch's dropout runs none)
    with pytest.raises(RuntimeError, match="between dropout's bernoulli_ and its mask"), dropout._TorchBernoulli():
        torch.empty(10).bernoulli_(0.3)
        torch.manual_seed(1)
    assert _get_current_dispatch_mode() is None  # the mode ended all the same


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


@needs_stream
def test_attention_softmax_is_plain_only_where_every_query_has_a_key():
    q = torch.randn(2, 2, 5, 4)
    open_, closed = torch.ones(2, 1, 5, 5, dtype=torch.bool), torch.ones(2, 1, 5, 5, dtype=torch.bool)
    closed[0, 0, 1] = False
    assert dropout.rows_open(None) and dropout.rows_open(open_) and not dropout.rows_open(closed)
    assert dropout.rows_open(torch.zeros(2, 1, 1, 5)) and not dropout.rows_open(closed.float().log())
    for mask, softmax in ((open_, torch.ops.aten._softmax.default), (closed, torch.ops.aten._safe_softmax.default)):
        with _Ops() as ops, TorchStreamDropout():
            F.scaled_dot_product_attention(q, q, q, attn_mask=mask, dropout_p=0.5)
        assert softmax in ops.seen and torch.ops.aten.bernoulli_.float not in ops.seen  # filled, not drawn by torch


def test_the_torch_stream_is_used_only_when_it_draws_what_torch_draws():
    dropout.torch_stream_available.cache_clear()
    try:
        with mock.patch.object(dropout, "mt19937_bernoulli_", lambda out, *args: out.fill_(1)):
            assert not dropout.torch_stream_available()
            assert isinstance(dropout.dropout_mode("torch", torch.device("cpu")), contextlib.nullcontext)
            assert dropout.masks_drawn_by("torch", torch.device("cpu")) == "torch's masks, torch's kernel"
    finally:
        dropout.torch_stream_available.cache_clear()
    if dropout.torch_stream_available():
        assert dropout.masks_drawn_by("torch", torch.device("cpu")) == "torch's masks, fast stream"
    assert dropout.masks_drawn_by("pcg64", torch.device("cpu")) == "pcg64 masks"
    assert isinstance(dropout.dropout_mode("pcg64", torch.device("cpu")), FastDropout)
    assert isinstance(dropout.dropout_mode("torch", torch.device("meta")), contextlib.nullcontext)


@needs_stream
def test_training_with_the_torch_stream_gives_torchs_weights_bit_for_bit():
    cfg = TrainConfig(lr=0.05, batch_size=8, max_steps=6)
    fast, plain = Regression(dropout=0.3), Regression(dropout=0.3)
    assert dropout.torch_stream_available()  # its check (which draws too) done before counting
    with mock.patch.object(dropout, "mt19937_bernoulli_", wraps=mt19937_bernoulli_) as drawn:
        train(fast, data(), collate, cfg, progress=False)
    assert drawn.call_count == 6  # one mask a step, drawn here
    with mock.patch.object(dropout, "torch_stream_available", lambda: False):
        train(plain, data(), collate, cfg, progress=False)
    assert torch.equal(weights(fast), weights(plain))


@given(p=st.floats(0.0, 1.0, exclude_max=True), seed=st.integers(0, 2**31))
@settings(max_examples=25, deadline=None)
def test_keep_scale_is_zero_or_the_exact_inverse_keep_rate_and_follows_torchs_seed(p, seed):
    torch.manual_seed(seed)
    first = keep_scale((64, 1000), p)
    torch.manual_seed(seed)
    assert torch.equal(keep_scale((64, 1000), p), first)
    dropped = min(round(p * 65536), 65535)
    assert set(first.unique().tolist()) <= {0.0, torch.tensor(65536 / (65536 - dropped)).item()}
    rate = (first == 0).float().mean().item()
    spread = 5 * (dropped / 65536 * (1 - dropped / 65536) / first.numel()) ** 0.5
    assert abs(rate - dropped / 65536) <= spread + 1e-12


def test_dropout_under_the_mode_multiplies_by_keep_scale_and_passes_evaluation_through():
    x = torch.randn(4, 50)
    with FastDropout():
        assert F.dropout(x, 0.3, training=False) is x
        torch.manual_seed(3)
        dropped = torch.nn.Dropout(0.3).train()(x)
    torch.manual_seed(3)
    assert torch.equal(dropped, x * keep_scale(x.shape, 0.3))


@pytest.mark.parametrize("mask", ["bool", "blocked row", "float", "causal", None])
def test_attention_under_the_mode_is_scaled_dot_product_attention_with_its_dropout(mask):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 4, generator=gen, requires_grad=True) for _ in range(3))
    kwargs = {"is_causal": True} if mask == "causal" else {}
    if mask in ("bool", "blocked row"):
        kwargs["attn_mask"] = torch.rand(2, 1, 7, 7, generator=gen) > 0.3
        kwargs["attn_mask"][..., 0] = True
        if mask == "blocked row":  # a query that may attend to nothing: zeros out, as torch's kernel gives
            kwargs["attn_mask"][1, 0, 4] = False
    elif mask == "float":
        kwargs["attn_mask"] = torch.randn(2, 1, 7, 7, generator=gen)
    # p below 2^-17 rounds to no drop: the math must then be torch's kernel's, values and gradients.
    with FastDropout():
        ours = F.scaled_dot_product_attention(q, k, v, dropout_p=1e-6, **kwargs)
    (g_ours,) = torch.autograd.grad(ours.square().sum(), q)
    reference = F.scaled_dot_product_attention(q, k, v, **kwargs)
    (g_ref,) = torch.autograd.grad(reference.square().sum(), q)
    assert torch.allclose(ours, reference, atol=1e-6) and torch.allclose(g_ours, g_ref, atol=1e-5)
    # With dropout, the probabilities are multiplied by keep_scale drawn from torch's generator.
    torch.manual_seed(5)
    with FastDropout():
        dropped = F.scaled_dot_product_attention(q, k, v, dropout_p=0.4, **kwargs)
    torch.manual_seed(5)
    mask_value = kwargs.get("attn_mask")
    if mask == "causal":
        mask_value = torch.ones(7, 7, dtype=torch.bool).tril()
    scores = q @ k.transpose(-2, -1) / 2
    if mask_value is not None:
        scores = scores.masked_fill(~mask_value, -torch.inf) if mask_value.dtype == torch.bool else scores + mask_value
    expected = (torch._safe_softmax(scores, -1) * keep_scale((2, 3, 7, 7), 0.4)) @ v
    assert torch.allclose(dropped, expected, atol=1e-6)


def test_pcg64_dropout_trains_reproducibly_with_other_masks_than_torchs():
    cfg = TrainConfig(lr=0.05, batch_size=8, max_steps=6, dropout_rng="pcg64")
    first, second, torchs = Regression(dropout=0.3), Regression(dropout=0.3), Regression(dropout=0.3)
    train(first, data(), collate, cfg, progress=False)
    train(second, data(), collate, cfg, progress=False)
    train(torchs, data(), collate, cfg.model_copy(update={"dropout_rng": "torch"}), progress=False)
    assert torch.equal(weights(first), weights(second))
    assert not torch.equal(weights(first), weights(torchs))


def test_an_unknown_dropout_rng_is_refused():
    with pytest.raises(ValueError, match="unknown dropout_rng 'philox': choose one of torch, pcg64"):
        TrainConfig(dropout_rng="philox")


def test_keep_scale_does_not_depend_on_the_thread_count():
    threads = torch.get_num_threads()
    masks = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            torch.manual_seed(11)
            masks.append(keep_scale((3, 1 << 18), 0.25))  # three blocks
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(*masks)
