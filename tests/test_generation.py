"""Our beam search against transformers' generate on the same weights and inputs: the same outputs, token for token."""

from unittest import mock

import pytest
import torch
from transformers import MBartConfig, MBartForConditionalGeneration

from smcbench.training.generation import beam_search, supported


def tiny_mbart(seed: int, eos_bias: float) -> MBartForConditionalGeneration:
    torch.manual_seed(seed)
    config = MBartConfig(vocab_size=60, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                         forced_eos_token_id=2, d_model=32, encoder_layers=2, decoder_layers=2,
                         encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                         decoder_ffn_dim=64, max_position_embeddings=64, scale_embedding=True,
                         tie_word_embeddings=False)
    model = MBartForConditionalGeneration(config).eval()
    with torch.no_grad():  # confident next-token distributions, and EOS likely enough to end at many lengths
        model.lm_head.weight.mul_(40.0)
        for layer in model.model.decoder.layers:  # the source decides (so sentences end at different steps)
            layer.encoder_attn.out_proj.weight.mul_(30.0)
        model.final_logits_bias[0, 2] = eos_bias
    return model


def sources(seed: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 12, (batch,), generator=gen)
    ids = torch.full((batch, int(lengths.max())), 1)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths.tolist()):
        ids[i, :n] = torch.randint(4, 60, (n,), generator=gen)
        ids[i, n - 1] = 2
        mask[i, :n] = 1
    return ids, mask


def reference(model, ids, mask, start, beams, max_new) -> list[list[int]]:
    out = model.generate(input_ids=ids, attention_mask=mask, decoder_start_token_id=start, num_beams=beams,
                         max_new_tokens=max_new, early_stopping=True)
    rows = []
    for row in out[:, 1:].tolist():
        rows.append(row[: row.index(2) + 1] if 2 in row else [t for t in row if t != 1])
    return rows


@pytest.mark.parametrize("seed, eos_bias, beams, max_new", [(1, 2.0, 4, 20), (2, 2.0, 3, 20), (4, 2.0, 5, 20),
                                                            (4, 2.0, 2, 12), (0, -20.0, 2, 6)])
def test_beam_search_equals_generate(seed, eos_bias, beams, max_new):
    model = tiny_mbart(seed, eos_bias)
    assert supported(model)
    ids, mask = sources(seed, 9)
    got = beam_search(model, ids, mask, decoder_start_token_id=50, num_beams=beams, max_new_tokens=max_new)
    expected = reference(model, ids, mask, 50, beams, max_new)
    assert got == expected
    lengths = {len(r) for r in got}
    if eos_bias > -10:
        assert len(lengths) > 1  # sentences left the batch at different steps
    else:
        assert lengths == {max_new}  # EOS never chosen: the forced EOS at the limit


def test_models_asking_for_more_than_beam_search_are_not_supported():
    model = tiny_mbart(0, 0.0)
    model.generation_config.no_repeat_ngram_size = 3
    assert not supported(model)


def test_the_search_projects_through_a_padded_head_with_the_same_logits_and_gives_the_model_back():
    from smcbench.training.heads import PaddedHead, padded_head

    model = tiny_mbart(1, 2.0)
    head = model.get_output_embeddings()
    with torch.no_grad(), padded_head(model, 36) as used:
        padded = model.get_output_embeddings()
        assert used and isinstance(padded, PaddedHead) and padded.padded()[0].shape == (64, 32)  # 60 -> 64
        x = torch.randn(36, 32)
        assert torch.equal(padded(x), head(x))
    assert model.get_output_embeddings() is head
    ids, mask = sources(1, 9)
    with mock.patch("smcbench.training.generation.padded_head", wraps=padded_head) as used:
        beam_search(model, ids, mask, decoder_start_token_id=50, num_beams=4, max_new_tokens=8)
    assert used.call_count == 1 and model.get_output_embeddings() is head


def test_the_search_cache_selects_rows_on_update_with_the_plain_caches_values():
    """Beam swaps and sentences leaving, then the next token: the search's cache layers hold what transformers'
    DynamicLayer holds after the same calls, bit for bit and in the same layout."""
    import copy

    from smcbench.training.generation import _search_cache

    model = tiny_mbart(1, 2.0)
    ids, mask = sources(1, 3)
    hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state.repeat_interleave(2, dim=0)
    mask = mask.repeat_interleave(2, dim=0)
    step = torch.full((6, 1), 50)
    with torch.no_grad():
        cache = model(attention_mask=mask, encoder_outputs=(hidden,), decoder_input_ids=step, use_cache=True).cache
    plain = copy.deepcopy(cache)
    _search_cache(cache)
    assert {type(layer).__name__ for layer in cache.self_attention_cache.layers} == {"SelectOnUpdate"}
    assert {type(layer).__name__ for layer in cache.cross_attention_cache.layers} == {"SelectNow"}
    swap, leave = torch.tensor([1, 1, 2, 3, 5, 4]), torch.tensor([0, 1, 4, 5])  # then sentence 1 leaves
    for c in (cache, plain):
        c.self_attention_cache.reorder_cache(swap)
        c.batch_select_indices(leave)
    new = torch.randn(4, 4, 1, 8)
    for ours, theirs in zip(cache.self_attention_cache.layers, plain.self_attention_cache.layers, strict=True):
        assert ours.get_seq_length() == theirs.get_seq_length() == 1
        got, expected = ours.update(new, -new), theirs.update(new, -new)
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a, b) and a.stride() == b.stride()
    for ours, theirs in zip(cache.cross_attention_cache.layers, plain.cross_attention_cache.layers, strict=True):
        assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)
