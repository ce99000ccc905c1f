"""Sequence models for protein classification: a protein language model's per-residue features, mean-pooled over
the real residues (never padding or the special tokens), then a classification head."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

# ESM's alphabet (fair-esm / transformers' EsmTokenizer), in vocabulary order.
ESM_VOCAB = ("<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q",
             "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>")


def write_esm_vocab(folder: Path) -> Path:
    """The vocabulary file EsmTokenizer reads, for models this package builds itself."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vocab.txt"
    path.write_text("\n".join(ESM_VOCAB) + "\n")
    return path


class MeanPooledClassifier(nn.Module):
    """`backbone` (an ESM or TAPE/BERT encoder without pooler) → mean over residues → `classifier` (dense, tanh,
    dropout, out)."""

    def __init__(self, backbone: nn.Module, hidden: int, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.ModuleDict({"dense": nn.Linear(hidden, hidden), "out_proj": nn.Linear(hidden, num_labels)})
        self.dropout = nn.Dropout(dropout)

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, residue_mask: torch.Tensor) -> torch.Tensor:
        states = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = residue_mask.to(states.dtype).unsqueeze(-1)
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, residue_mask: torch.Tensor,
                labels: torch.Tensor | None = None) -> SimpleNamespace:
        pooled = self.pool(input_ids, attention_mask, residue_mask)
        hidden = torch.tanh(self.classifier["dense"](self.dropout(pooled)))
        logits = self.classifier["out_proj"](self.dropout(hidden))
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return SimpleNamespace(loss=loss, logits=logits)
