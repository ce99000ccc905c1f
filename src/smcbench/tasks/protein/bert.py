"""Protein BERTs published as PyTorch checkpoints (TAPE, AntiBERTy) turned into `transformers` folders.

A checkpoint is read with `torch.load(weights_only=True)`: tensors only, never arbitrary pickled objects. Its `bert.`
encoder (without the pooler) and, where present, BERT's masked-LM head (`cls.predictions.`) are kept; other heads
(AntiBERTy's species, chain and graft classifiers) are dropped. The tokenizer is a BertTokenizer over the model's
vocabulary, residues as space-separated words (the protein tasks encode them so).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from smcbench.errors import SmcBenchError


def load_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A tensors-only PyTorch checkpoint of `what` (e.g. TAPE): `pytorch_model.bin`, or a folder holding it."""
    path = path / "pytorch_model.bin" if path.is_dir() else path
    if not path.is_file():
        raise SmcBenchError(f"no {what} checkpoint at {str(path)!r}: give {what}'s pytorch_model.bin or its folder")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (any unreadable or non-tensor pickle: one clear line)
        raise SmcBenchError(f"{path}: not a tensors-only PyTorch checkpoint ({type(err).__name__})") from err


def save_bert(state: dict[str, torch.Tensor], config: dict[str, Any], vocab: Sequence[str],
              specials: dict[str, str], out: Path, where: str) -> Path:
    """A BertForMaskedLM folder (a BertModel one when the checkpoint has no masked-LM head) with its tokenizer.
    `specials`: the tokenizer's special tokens by role (cls_token, sep_token, ...). A checkpoint whose encoder does
    not fit `config` exactly is an error naming the first mismatches."""
    from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizer

    encoder = {k: v for k, v in state.items() if k.startswith("bert.") and ".pooler." not in k}
    if not encoder:
        raise SmcBenchError(f"{where}: no `bert.` weights: not a BERT checkpoint")
    head = {k: v for k, v in state.items() if k.startswith("cls.predictions.")}
    bert_config = BertConfig(**config)
    if head:  # BertForMaskedLM has no pooler; its decoder shares the word embeddings only where they are equal
        decoder = head.get("cls.predictions.decoder.weight")
        bert_config.tie_word_embeddings = decoder is None or torch.equal(
            decoder, encoder.get("bert.embeddings.word_embeddings.weight", torch.empty(0)))
        model, weights = BertForMaskedLM(bert_config), {**encoder, **head}
    else:
        model = BertModel(bert_config, add_pooling_layer=False)
        weights = {k[len("bert."):]: v for k, v in encoder.items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")
               and not (m == "cls.predictions.decoder.weight" and bert_config.tie_word_embeddings)]
    unexpected = [u for u in unexpected if not u.endswith("position_ids")]
    if missing or unexpected:
        raise SmcBenchError(f"{where}: does not fit the architecture: missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]}")
    model.save_pretrained(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(out / "vocab.txt"), do_lower_case=False, tokenize_chinese_chars=False,
                  **specials).save_pretrained(out)
    return out
