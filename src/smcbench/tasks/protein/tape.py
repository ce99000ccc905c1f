"""TAPE's transformer (Rao et al. 2019, "Evaluating Protein Transfer Learning with TAPE"): a 12-layer BERT over
TAPE's IUPAC vocabulary, built from its published configuration as a `transformers` BertModel folder.

`convert_tape(checkpoint, out)` turns TAPE's released PyTorch checkpoint (`pytorch_model.bin` of
ProteinBertForMaskedLM, whose `bert.` module names are BERT's) into such a folder, read with
`torch.load(weights_only=True)`: tensors only, never arbitrary pickled objects. `build_tape(out)` writes the same
architecture with random weights (the control, and what tests use at a smaller size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from smcbench.tasks.protein.bert import load_tensors, save_bert

# TAPE's IUPAC vocabulary, in its order (tape/tokenizers.py): five specials, then 25 residue letters.
TAPE_VOCAB = ("<pad>", "<mask>", "<cls>", "<sep>", "<unk>", *"ABCDEFGHIKLMNOPQRSTUVWXYZ")
# TAPE's released transformer (bert-base, tape/models/modeling_bert.py defaults for `bert-base`).
TAPE_CONFIG: dict[str, Any] = {"vocab_size": len(TAPE_VOCAB), "hidden_size": 768, "num_hidden_layers": 12,
                               "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
                               "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
                               "max_position_embeddings": 8192, "type_vocab_size": 1, "initializer_range": 0.02,
                               "layer_norm_eps": 1e-12, "pad_token_id": 0}


TAPE_SPECIALS = {"cls_token": "<cls>", "sep_token": "<sep>", "pad_token": "<pad>", "mask_token": "<mask>",
                 "unk_token": "<unk>"}


def build_tape(out: Path, seed: int = 0, **shape: Any) -> Path:
    """TAPE's architecture with random weights (`shape` overrides sizes, e.g. for tests)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    state = {f"bert.{k}": v for k, v in BertModel(BertConfig(**{**TAPE_CONFIG, **shape}),
                                                   add_pooling_layer=False).state_dict().items()}
    return save_bert(state, {**TAPE_CONFIG, **shape}, TAPE_VOCAB, TAPE_SPECIALS, out, "TAPE (random weights)")


def convert_tape(checkpoint: Path, out: Path, **shape: Any) -> Path:
    """TAPE's `pytorch_model.bin` (or a folder holding it) → a BERT folder with TAPE's tokenizer."""
    return save_bert(load_tensors(checkpoint, "TAPE"), {**TAPE_CONFIG, **shape}, TAPE_VOCAB, TAPE_SPECIALS, out,
                     f"{checkpoint} (TAPE transformer)")
