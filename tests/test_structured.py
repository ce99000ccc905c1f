"""Structured pruning: unit counts, masks, the physically smaller model (same outputs, reloads), the method."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers import tiny_bert_config
from smcbench.errors import SmcBenchError
from smcbench.sparsity.structured import counts, removed
from smcbench.structure import load_shrunk, save_shrunk, shrink, unit_masks, units


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
    return units(net), unit_masks(net, level)


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


def test_taylor_score_is_the_absolute_first_order_change_of_the_unit():
    from smcbench.methods.structured import taylor_scores
    from smcbench.sparsity.structured import Slice, Unit

    w = {"a": torch.tensor([[1.0, -2.0], [3.0, 4.0]]), "b": torch.tensor([[0.5, 1.0], [2.0, -1.0]])}
    g = {"a": torch.tensor([[1.0, 1.0], [0.0, 2.0]]), "b": torch.tensor([[2.0, 0.0], [1.0, 1.0]])}
    row0 = Unit("neuron", 0, 0, (Slice("a", 0, 0, 1), Slice("b", 1, 0, 1)))  # a's row 0, b's column 0
    row1 = Unit("neuron", 0, 1, (Slice("a", 0, 1, 2), Slice("b", 1, 1, 2)))
    # row 0: 1·1 + (−2)·1 + 0.5·2 + 2·1 = 2; row 1: 3·0 + 4·2 + 1·0 + (−1)·1 = 7
    assert taylor_scores([row0, row1], w, g).tolist() == [2.0, 7.0]


def test_structured_with_the_taylor_score_prunes_the_counted_units(tiny_model_path, data_root, tmp_path):
    from helpers import csqa_request
    from smcbench.runner.single import execute
    from smcbench.sparsity import read_masks

    [r] = execute(csqa_request(tiny_model_path, data_root, tmp_path, "structured", [0.5], structured_score="taylor",
                               structured_batches=2, retrain=False))
    masks = read_masks(f"{r['dir']}/masks.safetensors")
    from transformers import AutoModelForMultipleChoice

    gone = removed(units(AutoModelForMultipleChoice.from_pretrained(tiny_model_path)), masks)
    h, n = counts(0.5, 2, 4 * 16 * 8, 32, 2 * 16)
    assert sum(u.kind == "head" for u in gone) == 2 * h and sum(u.kind == "neuron" for u in gone) == 2 * n
    assert r["notes"]["retrained"] is False
