import pytest
from torch import nn

from smcbench.errors import SmcBenchError
from smcbench.sparsity import select_prunable


def test_all_preset_takes_every_linear_and_embedding_weight_but_no_bias_or_norm(tiny_bert):
    names = set(select_prunable(tiny_bert, "all"))
    assert "bert.embeddings.word_embeddings.weight" in names
    assert "bert.embeddings.position_embeddings.weight" in names
    assert "classifier.weight" in names
    assert "bert.pooler.dense.weight" in names
    assert "bert.encoder.layer.0.attention.self.query.weight" in names
    assert not any(n.endswith("bias") or "LayerNorm" in n for n in names)
    linear_and_embedding = [
        m for m in tiny_bert.modules() if isinstance(m, nn.Linear | nn.Embedding)
    ]
    assert len(names) == len(linear_and_embedding)


def test_encoder_preset_keeps_embeddings_and_heads_dense(tiny_bert):
    names = set(select_prunable(tiny_bert, "encoder"))
    assert not any("embeddings" in n for n in names)
    assert "classifier.weight" not in names and "bert.pooler.dense.weight" not in names
    assert "bert.encoder.layer.1.output.dense.weight" in names


def test_include_and_exclude_patterns(tiny_bert):
    names = select_prunable(tiny_bert, "all", include=[r"layer\.0\."], exclude=["query"])
    assert names and all("layer.0." in n and "query" not in n for n in names)


def test_tied_weights_appear_once():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "head": head})
    assert list(select_prunable(model)) == ["emb.weight"]


def test_conv_weights_are_selected():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert list(select_prunable(model)) == ["0.weight"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"preset": "everything"}, "unknown selection preset"),
        ({"include": ["nothing-matches"]}, "no prunable tensor selected"),
        ({"include": ["("]}, "bad selection pattern"),
    ],
)
def test_bad_selection_is_a_clear_error(tiny_bert, kwargs, message):
    with pytest.raises(SmcBenchError, match=message):
        select_prunable(tiny_bert, **kwargs)


def test_model_without_prunable_tensors_is_an_error():
    with pytest.raises(SmcBenchError, match="no prunable tensor"):
        select_prunable(nn.Sequential(nn.LayerNorm(4)))
