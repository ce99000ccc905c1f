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

from smcbench.errors import SmcBenchError

# TAPE's IUPAC vocabulary, in its order (tape/tokenizers.py): five specials, then 25 residue letters.
TAPE_VOCAB = ("<pad>", "<mask>", "<cls>", "<sep>", "<unk>", *"ABCDEFGHIKLMNOPQRSTUVWXYZ")
# TAPE's released transformer (bert-base, tape/models/modeling_bert.py defaults for `bert-base`).
TAPE_CONFIG: dict[str, Any] = {"vocab_size": len(TAPE_VOCAB), "hidden_size": 768, "num_hidden_layers": 12,
                               "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
                               "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
                               "max_position_embeddings": 8192, "type_vocab_size": 1, "initializer_range": 0.02,
                               "layer_norm_eps": 1e-12, "pad_token_id": 0}


def _save_tokenizer(out: Path) -> None:
    from transformers import BertTokenizer

    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(TAPE_VOCAB) + "\n")
    BertTokenizer(str(out / "vocab.txt"), do_lower_case=False, tokenize_chinese_chars=False, cls_token="<cls>",
                  sep_token="<sep>", pad_token="<pad>", mask_token="<mask>", unk_token="<unk>").save_pretrained(out)


def build_tape(out: Path, seed: int = 0, **shape: Any) -> Path:
    """TAPE's architecture with random weights (`shape` overrides sizes, e.g. for tests)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    BertModel(BertConfig(**{**TAPE_CONFIG, **shape}), add_pooling_layer=False).save_pretrained(out)
    _save_tokenizer(out)
    return out


def convert_tape(checkpoint: Path, out: Path, **shape: Any) -> Path:
    """TAPE's `pytorch_model.bin` (or a folder holding it) → a BertModel folder with TAPE's tokenizer."""
    from transformers import BertConfig, BertModel

    path = checkpoint / "pytorch_model.bin" if checkpoint.is_dir() else checkpoint
    if not path.is_file():
        raise SmcBenchError(f"no TAPE checkpoint at {str(path)!r}: give TAPE's pytorch_model.bin or its folder")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (any unreadable or non-tensor pickle: one clear line)
        raise SmcBenchError(f"{path}: not a tensors-only PyTorch checkpoint ({type(err).__name__})") from err
    weights = {k[len("bert."):]: v for k, v in state.items() if k.startswith("bert.") and ".pooler." not in k}
    if not weights:
        raise SmcBenchError(f"{path}: no `bert.` weights: not a TAPE transformer checkpoint")
    model = BertModel(BertConfig(**{**TAPE_CONFIG, **shape}), add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    if missing or unexpected:
        raise SmcBenchError(f"{path}: does not fit TAPE's transformer: missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]}")
    model.save_pretrained(out)
    _save_tokenizer(out)
    return out
