"""Structured pruning: unit counts, masks, the physically smaller model (same outputs, reloads), the method."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers import tiny_bert_config
from smcbench.errors import SmcBenchError
from smcbench.sparsity.structured import counts, magnitude_scores, removed, structured_masks
from smcbench.structure import load_shrunk, save_shrunk, shrink, unit_tensors, units


@given(st.floats(0.0, 0.95), st.integers(2, 16), st.integers(1, 64), st.integers(2, 256), st.integers(1, 8))
def test_counts_come_within_half_a_neuron_of_the_target(level, heads, head_numel, neurons, neuron_numel):
    h, n = counts(level, heads, head_numel, neurons, neuron_numel)
    assert 0 <= h <= heads - 1 and 0 <= n <= neurons - 1
    target = level * (heads * head_numel + neurons * neuron_numel)
    if 0 < n < neurons - 1:  # not clamped: nearest count of neurons
        assert abs(h * head_numel + n * neuron_numel - target) <= neuron_numel / 2


def model(seed=0, **cfg):
    from transformers import BertForMultipleChoice

    torch.manual_seed(seed)
    return BertForMultipleChoice(tiny_bert_config(**cfg)).eval()


def test_units_of_a_bert_layer_are_heads_and_neurons():
    found = units(model(num_attention_heads=4, hidden_size=16, intermediate_size=32))
    assert sum(u.kind == "head" for u in found) == 2 * 4 and sum(u.kind == "neuron" for u in found) == 2 * 32
    head = next(u for u in found if u.kind == "head" and u.layer == 1 and u.index == 2)
    assert [(s.tensor.split("layer.1.")[1], s.dim, s.start, s.stop) for s in head.slices] == [
        ("attention.self.query.weight", 0, 8, 12), ("attention.self.key.weight", 0, 8, 12),
        ("attention.self.value.weight", 0, 8, 12), ("attention.output.dense.weight", 1, 8, 12)]
    with pytest.raises(SmcBenchError, match="no transformer encoder layers"):
        units(torch.nn.Linear(2, 2))


def masks_at(net, level):
    found = units(net)
    tensors = unit_tensors(found)
    params = {n: p.detach() for n, p in net.named_parameters() if n in tensors}
    return found, structured_masks(found, params, magnitude_scores(found, params), level, tensors)


def test_masks_prune_the_counted_lowest_norm_units_in_every_layer():
    net = model(num_attention_heads=4, hidden_size=16, intermediate_size=32)
    found, masks = masks_at(net, 0.5)
    gone = removed(found, masks)
    h, n = counts(0.5, 4, 4 * 16 * 4, 32, 2 * 16)
    params = {k: p.detach() for k, p in net.named_parameters()}
    for layer in (0, 1):
        for kind, k in (("head", h), ("neuron", n)):
            mine = [u for u in found if u.layer == layer and u.kind == kind]
            norms = sorted((float(u.values(params).norm()), u.index) for u in mine)
            assert sorted(u.index for u in gone if u.layer == layer and u.kind == kind) == sorted(
                i for _, i in norms[:k])
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned == 2 * (h * 4 * 16 * 4 + n * 2 * 16)  # nothing but whole units


def test_shrunk_model_has_the_masked_models_outputs_and_reloads(tmp_path):
    net = model(num_attention_heads=4, hidden_size=16, intermediate_size=32)
    _, masks = masks_at(net, 0.6)
    with torch.no_grad():
        params = dict(net.named_parameters())
        for name, mask in masks.items():
            params[name].mul_(mask)
    ids = torch.randint(5, 64, (3, 2, 7))
    expected = net(input_ids=ids).logits
    before = sum(p.numel() for p in net.parameters())
    gone = shrink(net, masks)
    assert gone and sum(p.numel() for p in net.parameters()) < before
    assert net.bert.encoder.layer[0].attention.self.query.out_features == 16 - 4 * len(gone["heads.0"])
    torch.testing.assert_close(net(input_ids=ids).logits, expected, atol=1e-6, rtol=1e-5)
    save_shrunk(net, gone, tmp_path / "shrunk")
    again = load_shrunk(tmp_path / "shrunk")
    torch.testing.assert_close(again(input_ids=ids).logits, expected, atol=1e-6, rtol=1e-5)
