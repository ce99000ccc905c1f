import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_bert_config(**overrides):
    from transformers import BertConfig

    cfg = dict(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    cfg.update(overrides)
    return BertConfig(**cfg)


@pytest.fixture
def tiny_bert():
    from transformers import BertForMultipleChoice

    torch.manual_seed(0)
    return BertForMultipleChoice(tiny_bert_config())
