"""Small builders shared by tests."""


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
