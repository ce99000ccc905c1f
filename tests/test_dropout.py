"""The loop's dropout_rng option (training.dropout)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.test_training import Regression, collate, data, weights

from smcbench.training import TrainConfig, train
from smcbench.training.dropout import FastDropout, keep_scale


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
