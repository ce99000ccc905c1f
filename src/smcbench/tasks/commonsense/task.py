"""Multiple-choice commonsense tasks with any Hugging Face encoder (AutoModelForMultipleChoice): each choice is
encoded with the question, the first-token representation goes to a classifier, as in the paper."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from smcbench import outcomes
from smcbench.errors import SmcBenchError
from smcbench.metrics import Metric
from smcbench.models import load_pretrained, load_tokenizer
from smcbench.settings import Settings
from smcbench.tasks.commonsense.data import MCExample, read_csqa, read_race, read_winogrande
from smcbench.tasks.registry import TaskRun, TaskSpec, describe_family, register_task
from smcbench.training import batched_outputs

Features = dict[str, list[list[int]] | int]


class MultipleChoiceRun(TaskRun):
    def __init__(self, spec: TaskSpec, name: str, read: Callable[[Path, str], list[MCExample]],
                 eval_split: str, num_choices: int, truncation: str = "longest_first") -> None:
        super().__init__(spec)
        self.name = name
        self.read = read
        self.eval_split = eval_split
        self.metric = Metric("accuracy", chance=1.0 / num_choices, tolerance=0.01)
        self.truncation = truncation

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.spec.model)

    def _encode(self, examples: list[MCExample]) -> list[Features]:
        firsts = [c.first for e in examples for c in e.choices]
        seconds = [c.second for e in examples for c in e.choices]
        enc = self.tokenizer(firsts, seconds, truncation=self.truncation, max_length=self.spec.max_length)
        keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
        out, at = [], 0
        for e in examples:
            n = len(e.choices)
            feats: Features = {k: enc[k][at:at + n] for k in keys}
            feats["label"] = -100 if e.label is None else e.label
            out.append(feats)
            at += n
        return out

    @cached_property
    def _splits(self) -> tuple[list[Features], list[Features]]:
        pool, val = self.split_training(self.read(self.data_dir, "train"))
        return self._encode(pool), self._encode(val)

    @cached_property
    def _eval_rows(self) -> list[MCExample]:
        rows = self.read(self.data_dir, self.eval_split)
        if self.spec.eval_size is not None:
            rows = rows[: self.spec.eval_size]
        if any(r.label is None for r in rows):
            raise SmcBenchError(f"{self.name}: the {self.eval_split} split has unlabelled examples")
        return rows

    @cached_property
    def _eval(self) -> list[Features]:
        return self._encode(self._eval_rows)

    def train_examples(self) -> tuple[Sequence[Features], list[int]]:
        train, _ = self._splits
        return train, [max(len(ids) for ids in f["input_ids"]) for f in train]

    def collate(self, examples: list[Features]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for f in examples for ids in f["input_ids"])
        pad = self.tokenizer.pad_token_id or 0
        batch = {}
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            if key in examples[0]:
                fill = pad if key == "input_ids" else 0
                batch[key] = torch.tensor(
                    [[ids + [fill] * (width - len(ids)) for ids in f[key]] for f in examples], dtype=torch.long
                )
        batch["labels"] = torch.tensor([f["label"] for f in examples], dtype=torch.long)
        return batch

    def inference_examples(self) -> Sequence[Features]:
        return self._eval

    def train_defaults(self) -> dict:
        return {"warmup_ratio": 0.06}

    def initial_model(self) -> nn.Module:
        torch.manual_seed(self.spec.seed)  # the head's initial weights are part of θ0
        return load_pretrained(self.spec.model, "AutoModelForMultipleChoice")

    def _hits(self, model: nn.Module, features: list[Features]) -> list[bool]:
        def correct(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            labels = batch.pop("labels")
            return m(**batch).logits.argmax(-1) == labels

        return [bool(h) for h in batched_outputs(model, features, self.collate, correct,
                                                 length=lambda f: max(len(x) for x in f["input_ids"]))]

    def validate(self, model: nn.Module) -> float:
        hits = self._hits(model, self._splits[1])
        return sum(hits) / len(hits)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return self.evaluate_outcomes(model)[0]

    def evaluate_outcomes(self, model: nn.Module) -> tuple[dict[str, float], outcomes.Outcomes]:
        hits = self._hits(model, self._eval)
        rows = self._eval_rows
        return ({"accuracy": sum(hits) / len(hits), "eval_examples": len(hits)},
                outcomes.binary([r.uid for r in rows], hits, [_describe(r) for r in rows]))


def _describe(example: MCExample) -> str:
    """An example as a reader sees it: the shared text (cut), the choices, the answer."""
    first = example.choices[0].first
    shared = first if all(c.first == first for c in example.choices) else ""
    options = " / ".join(f"{'*' if k == example.label else ''}{(c.second if shared else c.first + c.second)[:120]}"
                         for k, c in enumerate(example.choices))
    return (f"{shared[:300]}{'…' if len(shared) > 300 else ''} | " if shared else "") + options


class WinoGrandeOptions(Settings):
    train_variant: Literal["xs", "s", "m", "l", "xl"] = Field(
        "l", description="WinoGrande's training set size (the paper: the largest it reports, l).")


describe_family("commonsense", "minilm (default, offline), roberta-base, roberta-large, a hub id or folder")


@register_task("commonsense/csqa")
def csqa(spec: TaskSpec) -> TaskRun:
    # The test split is unlabelled: evaluate on dev, as the paper.
    return MultipleChoiceRun(spec, "commonsense/csqa", read_csqa, "dev", 5)


@register_task("commonsense/winogrande", options=WinoGrandeOptions)
def winogrande(spec: TaskSpec) -> TaskRun:
    size = WinoGrandeOptions(**spec.options).train_variant
    return MultipleChoiceRun(spec, "commonsense/winogrande",
                             lambda root, split: read_winogrande(root, split, size), "dev", 2)


@register_task("commonsense/race-m")
def race_middle(spec: TaskSpec) -> TaskRun:
    return MultipleChoiceRun(spec, "commonsense/race-m", lambda root, split: read_race(root, split, "middle"),
                             "test", 4, truncation="only_first")


@register_task("commonsense/race-h")
def race_high(spec: TaskSpec) -> TaskRun:
    return MultipleChoiceRun(spec, "commonsense/race-h", lambda root, split: read_race(root, split, "high"),
                             "test", 4, truncation="only_first")
