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


def write_jsonl(path, rows):
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


WORDS = ["river", "bank", "apple", "store", "dog", "park", "school", "book", "car", "road", "music", "table"]


def make_commonsense_data(root, n_train=48, n_dev=16):
    """Tiny CSQA, WinoGrande and RACE files in their public formats."""
    import json
    import random

    rng = random.Random(0)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = []
        for i in range(n):
            texts = rng.sample(WORDS, 5)
            rows.append({
                "answerKey": "ABCDE"[i % 5],
                "id": f"{split}-{i}",
                "question": {"stem": f"where would you find a {texts[i % 5]} number {i}?",
                             "choices": [{"label": lab, "text": t} for lab, t in zip("ABCDE", texts, strict=True)]},
            })
        write_jsonl(root / "commonsense" / "csqa" / f"{split}_data.jsonl", rows)
    for name, n in (("train_xs", n_train), ("dev", n_dev)):
        rows = [{"qID": f"{name}-{i}", "sentence": f"The {WORDS[i % 12]} was bigger than the cup so _ broke.",
                 "option1": WORDS[i % 12], "option2": "cup", "answer": str(1 + i % 2)} for i in range(n)]
        write_jsonl(root / "commonsense" / "winogrande" / f"{name}.jsonl", rows)
    for split, n in (("train", 12), ("test", 4)):
        for level in ("middle", "high"):
            folder = root / "commonsense" / "race" / split / level
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                doc = {"id": f"{i}.txt", "article": f"Tom has a {WORDS[i % 12]}. It is red and old.",
                       "questions": ["What does Tom have?", "The thing is _."],
                       "options": [[WORDS[i % 12], "a cat", "a hat", "a bat"], ["red", "blue", "new", "big"]],
                       "answers": ["A", "A"]}
                (folder / f"{i}.txt").write_text(json.dumps(doc))
    return root


def make_tiny_model(path):
    """A random-init 2-layer BERT multiple-choice model with MiniLM's tokenizer, saved as a local folder."""
    import torch
    from transformers import AutoTokenizer, BertForMultipleChoice

    from smcbench.models import resolve_model

    torch.manual_seed(0)
    BertForMultipleChoice(tiny_bert_config(vocab_size=30522, max_position_embeddings=128)).save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_model("minilm")).save_pretrained(path)
    return path
