"""Protein thermostability classification: HP-S2C2 (hot vs other) and HP-S2C5 (five classes), 10 folds each; HP-S
(five classes, one split); Meltome (FLIP splits, classes by melting temperature).

`--model`: a folder or hub id of an ESM model in `transformers` format (facebook/esm1b_t33_650M_UR50S as the paper,
any ESM-2), a TAPE transformer folder (tasks.protein.tape), `antiberty` (tasks.protein.antiberty) or `esm-tiny`.
Per-residue features are mean-pooled over the real residues and fed to a classification head.
Sequences longer than the model's maximum (ESM-1b: 1,022 residues) are cut, and the result counts the cuts.
Metric: accuracy; macro-F1 beside it. Model selection on a validation split carved from the training fold.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from smcbench import outcomes
from smcbench.errors import SmcBenchError
from smcbench.metrics import Metric
from smcbench.models import load_pretrained, load_tokenizer
from smcbench.pretraining import RECORD, PretrainRequest, model_provenance, register_pretrainer
from smcbench.settings import Settings
from smcbench.tasks.protein import antiberty
from smcbench.tasks.protein.antiberty import ANTIBERTY_NAME
from smcbench.tasks.protein.baseline import composition_predictions
from smcbench.tasks.protein.data import (
    HP_S_CLASSES,
    MELTOME_SPLITS,
    S2C2_FOLDS,
    S2C5_CLASSES,
    S2C5_FOLDS,
    Protein,
    meltome_classes,
    meltome_label,
    read_hp_s,
    read_meltome,
    read_s2c2,
    read_s2c5,
)
from smcbench.tasks.protein.model import MeanPooledClassifier
from smcbench.tasks.protein.pretrain import (
    TINY_NAME,
    PretrainCorpus,
    check_held_out,
    ensure_tiny,
    hotprotein_corpus,
)
from smcbench.tasks.registry import TaskRun, TaskSpec, describe_family, register_task
from smcbench.training import batched_outputs


class ProteinOptions(Settings):
    max_residues: int | None = Field(None, ge=8, description="Cut longer sequences to this many residues "
                                     "(default: the model's maximum, ESM-1b 1,022).")


class MeltomeOptions(ProteinOptions):
    split: Literal[MELTOME_SPLITS] = Field("mixed", description="FLIP's Meltome split: mixed (FLIP's "
                                           "recommended), full or clustered.")
    tm_thresholds: tuple[float, ...] | None = Field(
        None, description="Class boundaries in °C, comma-separated (k boundaries: k + 1 classes; a temperature at "
        "a boundary goes to the hotter class). Default: the training split's median (two balanced classes); the "
        "paper's own boundaries are not stated in the sources here.")

    @field_validator("tm_thresholds", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(float(v) for v in value.split(",") if v.strip()) or None
        return value

    @field_validator("tm_thresholds")
    @classmethod
    def _increasing(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is not None and list(value) != sorted(set(value)):
            raise ValueError("boundaries must be distinct and increasing")
        return value


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
    """One protein dataset: a subclass says how to read its training and test proteins and what esm-tiny is
    pretrained on for it; encoding, pooling, training defaults and metrics are shared."""

    classes: int
    paper_batch = 3  # the paper's ESM batch: 3 on HotProtein, 2 on Meltome

    def __init__(self, spec: TaskSpec, name: str) -> None:
        super().__init__(spec)
        self.name = name
        self.metric = Metric("accuracy", chance=1.0 / self.classes, secondary=("macro_f1",), tolerance=0.01,
                             baselines=("majority_rate", "composition_accuracy"))

    @abstractmethod
    def read(self, split: str) -> list[Protein]:
        """The labelled proteins of `split` (train or test)."""

    def training_and_validation(self) -> tuple[list[Protein], list[Protein]]:
        """(training pool, validation for model selection), both from the training data."""
        return self.split_training(self.read("train"))

    @abstractmethod
    def tiny_corpus(self, exclude_folds: tuple[int, ...] | None = None) -> PretrainCorpus:
        """What esm-tiny is pretrained on for this task: never a sequence of the evaluation split."""

    @abstractmethod
    def tiny_corpus_name(self) -> str:
        """The cached esm-tiny's folder suffix for that corpus."""

    def held_out_remedy(self) -> tuple[str, str]:
        """(the evaluation split's name, how to get a model that held it out), for the leak check's error."""
        return f"{self.name}'s test split", f"pretrain on its training split ({self.tiny_corpus_name()})"

    @cached_property
    def model_path(self) -> str:
        """The model's folder or hub id; `esm-tiny` is pretrained here (once, cached) with the evaluation split
        held out."""
        if self.spec.model == ANTIBERTY_NAME:
            return str(antiberty.ensure())
        if self.spec.model != TINY_NAME:
            return self.spec.model
        return str(ensure_tiny(self.tiny_corpus_name(), self.tiny_corpus, self.pretrain_command()))

    def pretrain_command(self) -> str:
        """The CLI that pretrains this task's esm-tiny ahead of a run."""
        return f"smc-bench pretrain {TINY_NAME} --task {self.name}"

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.model_path)

    def run_provenance(self) -> dict[str, Any]:
        """The data notes, plus what the model's record says a reader must know of its domain (AntiBERTy)."""
        data = super().run_provenance()
        record = Path(self.model_path) / RECORD
        notes = json.loads(record.read_text()).get("domain_notes", []) if record.is_file() else []
        return {**data, "notes": [*data.get("notes", []), *notes]} if notes else data

    def provenance(self) -> dict[str, Any]:
        if not Path(self.model_path).is_dir():
            return super().provenance()
        return model_provenance(Path(self.model_path), drop=("held_out_sequences",))  # thousands of keys

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
        pool, val = self.training_and_validation()
        return self._encode(pool), self._encode(val), self._encode(self._test_rows)

    @cached_property
    def _test_rows(self) -> list[Protein]:
        test = self.read("test")
        if Path(self.model_path).is_dir():
            check_held_out(Path(self.model_path), [p.sequence for p in test], *self.held_out_remedy())
        if self.spec.eval_size is not None:
            test = test[: self.spec.eval_size]
        return test

    @cached_property
    def composition_accuracy(self) -> float:
        """The residue-composition baseline's test accuracy (tasks.protein.baseline), on the residues the model
        sees."""
        pool, _ = self.training_and_validation()
        cut = self.max_residues
        test = self._test_rows
        predicted = composition_predictions([p.sequence[:cut] for p in pool], [p.label for p in pool],
                                            [p.sequence[:cut] for p in test], self.classes)
        return sum(a == p.label for a, p in zip(predicted, test, strict=True)) / len(test)

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

    def inference_examples(self) -> Sequence[Features]:
        return self._splits[2]

    def initial_model(self) -> nn.Module:
        self._splits  # noqa: B018  (reads the data first: a leak check fails before any model is built)
        backbone = load_pretrained(self.model_path, "AutoModel", add_pooling_layer=False)
        torch.manual_seed(self.spec.seed)  # the head's initial weights are part of θ0
        return MeanPooledClassifier(backbone, backbone.config.hidden_size, self.classes)

    def method_defaults(self) -> dict[str, Any]:
        return {"preset": "esm"}  # the paper prunes only ESM's attention and feed-forward Linear layers

    def _model_type(self) -> str:
        """esm or bert (TAPE), without building esm-tiny or asking the hub where the name already says it (a dry
        run of the paper's grid works offline)."""
        if self.spec.model == TINY_NAME:
            return "esm"
        if self.spec.model == ANTIBERTY_NAME:
            return "bert"
        config = Path(self.spec.model) / "config.json"
        if config.is_file():
            return json.loads(config.read_text()).get("model_type", "")
        if "esm" in self.spec.model.lower():
            return "esm"
        if "tape" in Path(self.spec.model).name.lower():  # a convert-tape folder not written yet (a dry run)
            return "bert"
        return self._config().model_type

    def train_defaults(self) -> dict[str, Any]:
        if self._model_type() == "bert":  # TAPE's setting: 4 epochs, lr 1e-4, linear decay, 100 warmup steps
            return {"lr": 1e-4, "schedule": "linear", "warmup_steps": 100, "epochs": 4.0,
                    "batch_size": self.paper_batch,
                    "eval_epochs": 1.0}
        # The paper's ESM-1b setting: backbone lr 1e-6, head lr 2e-2, OneCycle for both, batch 3 (HP-S) / 2.
        return {"lr": 2e-2, "lr_groups": ((r"^backbone\.", 1e-6),), "schedule": "one_cycle", "warmup_ratio": 0.3,
                "batch_size": self.paper_batch, "epochs": 10.0, "eval_epochs": 1.0}

    def _predict(self, model: nn.Module, features: list[Features]) -> list[int]:
        def step(m: nn.Module, batch: dict[str, torch.Tensor]) -> list[int]:
            batch.pop("labels")
            return m(**batch).logits.argmax(-1).tolist()

        return batched_outputs(model, features, self.collate, step, length=lambda f: len(f.input_ids))

    def validate(self, model: nn.Module) -> float:
        val = self._splits[1]
        return sum(p == f.label for p, f in zip(self._predict(model, val), val, strict=True)) / len(val)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return self.evaluate_outcomes(model)[0]

    def evaluate_outcomes(self, model: nn.Module) -> tuple[dict[str, float], outcomes.Outcomes]:
        test = self._splits[2]
        predicted, gold = self._predict(model, test), [f.label for f in test]
        majority = Counter(gold).most_common(1)[0][1] / len(gold)
        metrics = {"accuracy": sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(test),
                   "macro_f1": macro_f1(predicted, gold, self.classes), "majority_rate": majority,
                   "composition_accuracy": self.composition_accuracy,
                   "eval_examples": len(test), "cut_sequences": sum(f.cut for f in test),
                   "cut_train_sequences": sum(f.cut for f in self._splits[0])}
        rows = self._test_rows
        texts = [f"{p.uid} (class {p.label}, {len(p.sequence)} residues) {p.sequence[:60]}…" for p in rows]
        return metrics, outcomes.binary([p.uid for p in rows], [a == b for a, b in zip(predicted, gold, strict=True)],
                                        texts, {"prediction": predicted, "label": gold})


class HotProteinFoldRun(ProteinRun):
    """HP-S2C2 / HP-S2C5: 10 folds; esm-tiny is pretrained on all HotProtein sequences except the fold's test."""

    def __init__(self, spec: TaskSpec, name: str, reader: Callable[[Path, int, str], list[Protein]],
                 classes: int) -> None:
        self.reader, self.classes = reader, classes
        super().__init__(spec, name)

    def read(self, split: str) -> list[Protein]:
        return self.reader(self.data_dir, self.spec.fold, split)

    def tiny_corpus(self, exclude_folds: tuple[int, ...] | None = None) -> PretrainCorpus:
        return hotprotein_corpus(self.data_dir, exclude_folds or (self.spec.fold,))

    def tiny_corpus_name(self) -> str:
        return f"heldout-{self.spec.fold}"

    def pretrain_command(self) -> str:
        return f"{super().pretrain_command()} --exclude-folds {self.spec.fold}"

    def held_out_remedy(self) -> tuple[str, str]:
        k = self.spec.fold
        return f"fold {k}", f"pretrain one that holds fold {k} out (smc-bench pretrain esm-tiny --exclude-folds {k})"


describe_family("protein", "esm-tiny (default, pretrained here), antiberty (AntiBERTy from PyPI, antibodies only), "
                "an ESM or TAPE folder or hub id")


@register_task("protein/hp-s2c2", default_model="esm-tiny", folds=S2C2_FOLDS, options=ProteinOptions)
def hp_s2c2(spec: TaskSpec) -> TaskRun:
    return HotProteinFoldRun(spec, "protein/hp-s2c2", read_s2c2, classes=2)


class HpS2C5Run(HotProteinFoldRun):
    def data_provenance(self) -> dict[str, Any]:
        return {"classes": {str(t): c for t, c in S2C5_CLASSES.items()},
                "notes": ["HP-S2C5's five classes group its seven growth temperatures as {2.5}, {8, 15}, {27.5}, "
                          "{72.5}, {39, 80} °C: inferred from the paper's class counts, not stated by the source."]}


@register_task("protein/hp-s2c5", default_model="esm-tiny", folds=S2C5_FOLDS, options=ProteinOptions)
def hp_s2c5(spec: TaskSpec) -> TaskRun:
    return HpS2C5Run(spec, "protein/hp-s2c5", read_s2c5, classes=5)


class SingleSplitRun(ProteinRun):
    """A dataset with one fixed train/test split: esm-tiny is pretrained on its training split only."""

    def tiny_corpus(self, exclude_folds: tuple[int, ...] | None = None) -> PretrainCorpus:
        if exclude_folds:
            raise SmcBenchError(f"{self.name} has no folds: its esm-tiny holds the test split out")
        return PretrainCorpus.build(self.tiny_corpus_name(), f"{self.name}: the training split only (train and "
                                    "validation rows), never the test split; duplicates once",
                                    (p.sequence for p in self.read("train")),
                                    (p.sequence for p in self.read("test")))


class HpSRun(SingleSplitRun):
    classes = HP_S_CLASSES

    def read(self, split: str) -> list[Protein]:
        return read_hp_s(self.data_dir, split)

    def tiny_corpus_name(self) -> str:
        return "hp-s"


@register_task("protein/hp-s", default_model="esm-tiny", options=ProteinOptions)
def hp_s(spec: TaskSpec) -> TaskRun:
    return HpSRun(spec, "protein/hp-s")


class MeltomeRun(SingleSplitRun):
    """FLIP's Meltome split, classified by melting temperature; validation = FLIP's validation rows."""

    paper_batch = 2

    def __init__(self, spec: TaskSpec, name: str) -> None:
        self.spec = spec  # the class count depends on the options, read before the metric is built
        self.options = MeltomeOptions(**spec.options)
        self.classes = len(self.options.tm_thresholds or (0.0,)) + 1
        super().__init__(spec, name)

    @cached_property
    def _rows(self) -> dict[str, list]:
        return {part: read_meltome(self.data_dir, self.options.split, part) for part in ("train", "test")}

    @cached_property
    def boundaries(self) -> tuple[float, ...]:
        return meltome_classes(self._rows["train"], self.options.tm_thresholds)

    def read(self, split: str) -> list[Protein]:
        return [Protein(f"{split}{i}", r.sequence, meltome_label(r.melting_c, self.boundaries))
                for i, r in enumerate(self._rows[split])]

    def training_and_validation(self) -> tuple[list[Protein], list[Protein]]:
        """FLIP marks the training rows meant for model selection; without such rows, carve as other tasks do."""
        rows = self.read("train")
        flagged = [p for p, r in zip(rows, self._rows["train"], strict=True) if r.validation]
        if not flagged:
            return self.split_training(rows)
        pool = [p for p, r in zip(rows, self._rows["train"], strict=True) if not r.validation]
        if self.spec.train_size is not None:
            pool = pool[: self.spec.train_size]
        return pool, flagged[: self.spec.val_size]

    def tiny_corpus_name(self) -> str:
        return f"meltome-{self.options.split}"

    def data_provenance(self) -> dict[str, Any]:
        at = ", ".join(f"{b:g}" for b in self.boundaries)
        why = ("given" if self.options.tm_thresholds is not None
               else "the training median: the paper states no boundaries in the sources here")
        return {"split": self.options.split, "class_boundaries_c": list(self.boundaries),
                "notes": [f"Meltome classes by melting temperature at {at} °C ({why})."]}


@register_task("protein/meltome", default_model="esm-tiny", options=MeltomeOptions)
def meltome(spec: TaskSpec) -> TaskRun:
    return MeltomeRun(spec, "protein/meltome")


@register_pretrainer(TINY_NAME)
def pretrain_esm_tiny(request: PretrainRequest) -> Path:
    """`smc-bench pretrain esm-tiny`: the corpus of the chosen protein task (HP-S2C2 by default)."""
    from smcbench.tasks.protein.pretrain import pretrain_tiny
    from smcbench.tasks.registry import get_task, resolve_spec

    folds = request.exclude_folds
    if folds is not None and (not folds or any(not 0 <= k < S2C2_FOLDS for k in folds)):
        raise SmcBenchError(f"--exclude-folds {list(folds)}: HotProtein folds are 0..{S2C2_FOLDS - 1}")
    run = get_task(resolve_spec(TaskSpec(request.task or "protein/hp-s2c2", TINY_NAME, str(request.data_dir),
                                         options=request.options)))
    if not isinstance(run, ProteinRun):
        raise SmcBenchError(f"--task {request.task!r}: {TINY_NAME} is pretrained for the protein tasks")
    settings = {k: v for k, v in (("steps", request.steps), ("max_residues", request.max_length)) if v is not None}
    return pretrain_tiny(run.tiny_corpus(folds), request.out, **settings)
