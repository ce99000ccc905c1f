"""Protein thermostability classification: HP-S2C2 (hot vs other) and HP-S2C5 (five classes), 10 folds each.

`--model`: a folder or hub id of an ESM model in `transformers` format (facebook/esm1b_t33_650M_UR50S as the paper,
any ESM-2), a TAPE transformer folder (tasks.protein.tape), or `esm-tiny`. Per-residue features are mean-pooled
over the real residues and fed to a classification head.
Sequences longer than the model's maximum (ESM-1b: 1,022 residues) are cut, and the result counts the cuts.
Metric: accuracy; macro-F1 beside it. Model selection on a validation split carved from the training fold.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import nn

from smcbench.metrics import Metric
from smcbench.models import load_pretrained, load_tokenizer
from smcbench.settings import Settings
from smcbench.tasks.protein.data import S2C2_FOLDS, S2C5_FOLDS, Protein, read_s2c2, read_s2c5
from smcbench.tasks.protein.model import MeanPooledClassifier
from smcbench.tasks.protein.pretrain import TINY_NAME, check_held_out, ensure_tiny, model_provenance
from smcbench.tasks.registry import TaskRun, TaskSpec, register_task
from smcbench.training import batched_outputs


class ProteinOptions(Settings):
    max_residues: int | None = Field(None, ge=8, description="Cut longer sequences to this many residues "
                                     "(default: the model's maximum, ESM-1b 1,022).")


@dataclass
class Features:
    input_ids: list[int]
    label: int
    cut: bool  # the sequence was longer than the residues kept


def macro_f1(predicted: Sequence[int], gold: Sequence[int], classes: int) -> float:
    """The mean over classes of F1 (a class absent from both gold and predictions counts as 0)."""
    scores = []
    for c in range(classes):
        tp = sum(p == c and g == c for p, g in zip(predicted, gold, strict=True))
        fp = sum(p == c and g != c for p, g in zip(predicted, gold, strict=True))
        fn = sum(p != c and g == c for p, g in zip(predicted, gold, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / classes


class ProteinRun(TaskRun):
    def __init__(self, spec: TaskSpec, name: str, read: Callable[[Path, int, str], list[Protein]],
                 classes: int) -> None:
        super().__init__(spec)
        self.name = name
        self.read = read
        self.classes = classes
        self.metric = Metric("accuracy", chance=1.0 / classes, secondary=("macro_f1",))

    @cached_property
    def model_path(self) -> str:
        """The model's folder or hub id; `esm-tiny` is pretrained here (once, cached) with this fold held out."""
        if self.spec.model != TINY_NAME:
            return self.spec.model
        return str(ensure_tiny(self.data_dir, (self.spec.fold,)))

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.model_path)

    def provenance(self) -> dict[str, Any]:
        return model_provenance(Path(self.model_path)) if Path(self.model_path).is_dir() else super().provenance()

    @cached_property
    def max_residues(self) -> int:
        config_max = self._config().max_position_embeddings - 2  # <cls> and <eos>
        wanted = self.options.max_residues
        return min(wanted, config_max) if wanted else config_max

    def _config(self):
        from transformers import AutoConfig

        from smcbench.models import resolve_model

        return AutoConfig.from_pretrained(resolve_model(self.model_path))

    def _encode(self, proteins: list[Protein]) -> list[Features]:
        cut = self.max_residues
        # Residues space-separated: ESM's tokenizer splits either way, BERT-style ones (TAPE, ProtBert) need it.
        enc = self.tokenizer([" ".join(p.sequence[:cut]) for p in proteins], add_special_tokens=True)
        return [Features(list(ids), p.label, len(p.sequence) > cut) for ids, p in zip(enc["input_ids"], proteins,
                                                                                      strict=True)]

    @cached_property
    def _splits(self) -> tuple[list[Features], list[Features], list[Features]]:
        pool, val = self.split_training(self.read(self.data_dir, self.spec.fold, "train"))
        test = self.read(self.data_dir, self.spec.fold, "test")
        if Path(self.model_path).is_dir():
            check_held_out(Path(self.model_path), [p.sequence for p in test], self.spec.fold)
        if self.spec.eval_size is not None:
            test = test[: self.spec.eval_size]
        return self._encode(pool), self._encode(val), self._encode(test)

    def train_examples(self) -> tuple[Sequence[Features], list[int]]:
        train = self._splits[0]
        return train, [len(f.input_ids) for f in train]

    def collate(self, examples: list[Features]) -> dict[str, torch.Tensor]:
        """Padded to the batch's longest sequence only; `residue_mask` marks the real residues (not <cls>,
        <eos> or padding) that the mean pools over."""
        width = max(len(f.input_ids) for f in examples)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(examples), width), pad, dtype=torch.long)
        attention = torch.zeros(len(examples), width, dtype=torch.long)
        for i, f in enumerate(examples):
            ids[i, : len(f.input_ids)] = torch.tensor(f.input_ids)
            attention[i, : len(f.input_ids)] = 1
        special = torch.zeros(ids.shape, dtype=torch.bool)
        for token in (self.tokenizer.cls_token_id, self.tokenizer.eos_token_id, self.tokenizer.sep_token_id):
            if token is not None:
                special |= ids == token
        return {"input_ids": ids, "attention_mask": attention, "residue_mask": (attention == 1) & ~special,
                "labels": torch.tensor([f.label for f in examples])}

    def initial_model(self) -> nn.Module:
        self._splits  # noqa: B018  (reads the data first: a leak check fails before any model is built)
        backbone = load_pretrained(self.model_path, "AutoModel", add_pooling_layer=False)
        torch.manual_seed(self.spec.seed)  # the head's initial weights are part of θ0
        return MeanPooledClassifier(backbone, backbone.config.hidden_size, self.classes)

    def method_defaults(self) -> dict[str, Any]:
        return {"preset": "esm"}  # the paper prunes only ESM's attention and feed-forward Linear layers

    def train_defaults(self) -> dict[str, Any]:
        if self._config().model_type == "bert":  # TAPE's setting: 4 epochs, lr 1e-4, linear decay, 100 warmup steps
            return {"lr": 1e-4, "schedule": "linear", "warmup_steps": 100, "epochs": 4.0, "batch_size": 3,
                    "eval_epochs": 1.0}
        # The paper's ESM-1b setting: backbone lr 1e-6, head lr 2e-2, OneCycle for both, batch 3 (HP-S).
        return {"lr": 2e-2, "lr_groups": ((r"^backbone\.", 1e-6),), "schedule": "one_cycle", "warmup_ratio": 0.3,
                "batch_size": 3, "epochs": 10.0, "eval_epochs": 1.0}

    def _predict(self, model: nn.Module, features: list[Features]) -> list[int]:
        def step(m: nn.Module, batch: dict[str, torch.Tensor]) -> list[int]:
            batch.pop("labels")
            return m(**batch).logits.argmax(-1).tolist()

        return batched_outputs(model, features, self.collate, step, length=lambda f: len(f.input_ids))

    def validate(self, model: nn.Module) -> float:
        val = self._splits[1]
        return sum(p == f.label for p, f in zip(self._predict(model, val), val, strict=True)) / len(val)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        test = self._splits[2]
        predicted, gold = self._predict(model, test), [f.label for f in test]
        majority = Counter(gold).most_common(1)[0][1] / len(gold)
        return {"accuracy": sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(test),
                "macro_f1": macro_f1(predicted, gold, self.classes), "majority_rate": majority,
                "eval_examples": len(test), "cut_sequences": sum(f.cut for f in test),
                "cut_train_sequences": sum(f.cut for f in self._splits[0])}


@register_task("protein/hp-s2c2", default_model="esm-tiny", folds=S2C2_FOLDS, options=ProteinOptions)
def hp_s2c2(spec: TaskSpec) -> TaskRun:
    return ProteinRun(spec, "protein/hp-s2c2", read_s2c2, classes=2)


@register_task("protein/hp-s2c5", default_model="esm-tiny", folds=S2C5_FOLDS, options=ProteinOptions)
def hp_s2c5(spec: TaskSpec) -> TaskRun:
    # Five classes grouped from seven growth temperatures: the grouping is inferred (see data.S2C5_CLASSES).
    return ProteinRun(spec, "protein/hp-s2c5", read_s2c5, classes=5)
