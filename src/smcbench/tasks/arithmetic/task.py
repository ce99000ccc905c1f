"""Arithmetic word problems: MAWPS and ASDiv-A (5-fold cross-validation) and SVAMP (train on MAWPS + ASDiv-A).

`--model` names the solver and, after a colon, the embedder: `gts` (= `gts:minilm`), `graph2tree`,
`gts:roberta-base` (the paper's), `gts:random` (word embeddings from scratch, the public code's `random`), or any
hub name / local folder after the colon. Metric: answer-value accuracy (the predicted prefix equation, evaluated
with the problem's numbers, is within 1e-4 of the answer); equation accuracy (the exact prefix) beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import nn

from smcbench import outcomes
from smcbench.errors import SmcBenchError
from smcbench.metrics import Metric
from smcbench.models import load_pretrained, load_tokenizer
from smcbench.settings import Settings
from smcbench.tasks.arithmetic.data import Problem, read_problems
from smcbench.tasks.arithmetic.expressions import answer_correct
from smcbench.tasks.arithmetic.model import MathSolver, RandomEmbedder, SolverConfig
from smcbench.tasks.arithmetic.trees import OutputVocab, TreeShape, is_slot, tree_shape
from smcbench.tasks.registry import TaskRun, TaskSpec, describe_family, register_task
from smcbench.training import batched_outputs

FOLDS = 5
RANDOM_EMBEDDING_SIZE = 768  # the public code's embedding_size for `random`

# The paper's settings per architecture (SMC-Bench, after SVAMP's code).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "gts": {"hidden": 512, "lr": 1e-3, "embedding_lr": 8e-6},
    "graph2tree": {"hidden": 384, "lr": 8e-4, "embedding_lr": 1e-5},
}
EMBEDDER_PARAMS = r"^embedder\."


class ArithmeticOptions(Settings):
    hidden: int | None = Field(None, ge=8, description="The solver's hidden size (default: the paper's, GTS 512, "
                               "Graph2Tree 384); smaller solvers train faster on a CPU.")


def parse_model(name: str) -> tuple[str, str]:
    """`gts`, `graph2tree`, or either with `:<embedder>` -> (architecture, embedder)."""
    arch, _, embedder = name.partition(":")
    if arch not in ARCHITECTURES:
        raise SmcBenchError(f"arithmetic tasks take --model gts or graph2tree, optionally with :<embedder> "
                            f"(minilm, roberta-base, random, a hub name or folder); got {name!r}")
    return arch, embedder or "minilm"


@dataclass
class Features:
    problem: Problem
    input_ids: list[int]
    num_pos: list[int]  # token position of each number slot (its first sub-word)
    target: list[int] | None  # output ids; None when the equation needs a constant the training data lacks
    tree: TreeShape | None  # the target's tree structure, for teacher forcing
    graph_edges: tuple[list[tuple[int, int]], list[tuple[int, int]]]  # quantity cell, quantity comparison


class ArithmeticRun(TaskRun):
    # Open-ended answers: no chance level. Equation accuracy (the exact prefix) is reported beside.
    metric = Metric("accuracy", secondary=("equation_accuracy",), tolerance=0.01)

    def __init__(self, spec: TaskSpec, name: str, train_files: list[Path], eval_files: list[Path],
                 batch_size: int) -> None:
        super().__init__(spec)
        self.name = name
        self.train_files = train_files
        self.eval_files = eval_files
        self.batch_size = batch_size
        self.architecture, self.embedder_name = parse_model(spec.model)

    # -- data ------------------------------------------------------------------------------------------------

    @cached_property
    def tokenizer(self):
        # Words are tokenised one by one to keep number positions; byte-level BPE needs the prefix space for it.
        return load_tokenizer(self.embedder_name, add_prefix_space=True)

    @cached_property
    def words(self) -> dict[str, int]:
        """`random` embeddings: a word vocabulary from the training problems (0 padding, 1 unknown), as the
        public code builds it."""
        vocab = {"<pad>": 0, "<unk>": 1}
        for p in self._rows[0]:
            for w in p.question.split():
                vocab.setdefault(w, len(vocab))
        return vocab

    @property
    def pad_id(self) -> int:
        return 0 if self.embedder_name == "random" else (self.tokenizer.pad_token_id or 0)

    @cached_property
    def _rows(self) -> tuple[list[Problem], list[Problem], list[Problem]]:
        pool, val = self.split_training([p for f in self.train_files for p in read_problems(self.data_dir / f)])
        test = [p for f in self.eval_files for p in read_problems(self.data_dir / f)]
        if self.spec.eval_size is not None:
            test = test[: self.spec.eval_size]
        return pool, val, test

    @cached_property
    def vocab(self) -> OutputVocab:
        return OutputVocab.from_equations(p.equation for p in self._rows[0])

    def _features(self, problem: Problem) -> Features:
        words = problem.question.split()
        if self.embedder_name == "random":
            input_ids = [self.words.get(w, 1) for w in words[: self.spec.max_length]]
            first = {i: i for i in range(len(input_ids))}
        else:
            enc = self.tokenizer(words, is_split_into_words=True, truncation=True, max_length=self.spec.max_length)
            input_ids = list(enc["input_ids"])
            first = {}
            for pos, w in enumerate(enc.word_ids()):
                if w is not None and w not in first:
                    first[w] = pos
        last = max(first.values(), default=0)
        slot_words = {int(w[len("number"):]): i for i, w in enumerate(words) if is_slot(w)}
        # A slot cut off by truncation points at the last token (it stays addressable; its text is gone).
        num_pos = [first.get(slot_words.get(k, -1), last) for k in range(len(problem.numbers))]
        target = self.vocab.encode(problem.equation)
        tree = tree_shape(target, len(self.vocab.ops)) if target is not None else None
        return Features(problem, input_ids, num_pos, target, tree,
                        _graph_edges(words, first, slot_words, problem))

    @cached_property
    def _features_by_split(self) -> tuple[list[Features], list[Features], list[Features]]:
        pool, val, test = self._rows
        train = [self._features(p) for p in pool]
        return train, [self._features(p) for p in val], [self._features(p) for p in test]

    def train_examples(self) -> tuple[Sequence[Features], list[int]]:
        train = self._features_by_split[0]
        return train, [len(f.input_ids) for f in train]

    def collate(self, examples: list[Features]) -> dict[str, torch.Tensor]:
        return collate(examples, self.pad_id, self.architecture == "graph2tree")

    # -- model -----------------------------------------------------------------------------------------------

    def solver_config(self) -> SolverConfig:
        return SolverConfig(self.architecture, len(self.vocab.ops), len(self.vocab.constants),
                            hidden=self.options.hidden or ARCHITECTURES[self.architecture]["hidden"])

    def initial_model(self) -> nn.Module:
        torch.manual_seed(self.spec.seed)  # everything but the pretrained embedder starts from the seed
        if self.embedder_name == "random":
            embedder: nn.Module = RandomEmbedder(len(self.words), RANDOM_EMBEDDING_SIZE)
            size = RANDOM_EMBEDDING_SIZE
        else:
            # Only the token states are used: drop the pooler where the architecture has one, or its unused
            # weights would count as prunable (and be pruned for free).
            embedder = load_pretrained(self.embedder_name, "AutoModel")
            if getattr(embedder, "pooler", None) is not None:  # BERT-style models skip a None pooler
                embedder.pooler = None
            size = embedder.config.hidden_size
        return MathSolver(embedder, size, self.solver_config())

    def train_defaults(self) -> dict[str, Any]:
        arch = ARCHITECTURES[self.architecture]
        return {"lr": arch["lr"], "lr_groups": ((EMBEDDER_PARAMS, arch["embedding_lr"]),), "weight_decay": 1e-5,
                "batch_size": self.batch_size, "epochs": 50.0, "schedule": "step", "step_epochs": 20.0,
                "step_gamma": 0.5, "warmup_ratio": 0.0, "max_grad_norm": None, "eval_epochs": 1.0}

    # -- metrics ---------------------------------------------------------------------------------------------

    def predict(self, model: nn.Module, features: list[Features]) -> list[list[str]]:
        decoded = batched_outputs(model, features, self.collate, lambda m, batch: m.decode(**batch),
                                  length=lambda f: len(f.input_ids))
        return [self.vocab.decode(ids) for ids in decoded]

    def _correct(self, model: nn.Module, features: list[Features]) -> tuple[list[bool], list[bool]]:
        """Per problem: the value right, the exact prefix equation right."""
        predictions = self.predict(model, features) if features else []
        value = [answer_correct(pred, f.problem.numbers, f.problem.answer)
                 for pred, f in zip(predictions, features, strict=True)]
        equation = [tuple(pred) == f.problem.equation for pred, f in zip(predictions, features, strict=True)]
        return value, equation

    def validate(self, model: nn.Module) -> float:
        value, _ = self._correct(model, self._features_by_split[1])
        return sum(value) / len(value) if value else 0.0

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return self.evaluate_outcomes(model)[0]

    def evaluate_outcomes(self, model: nn.Module) -> tuple[dict[str, float], outcomes.Outcomes]:
        test = self._features_by_split[2]
        value, equation = self._correct(model, test)
        n = max(len(test), 1)
        metrics = {"accuracy": sum(value) / n, "equation_accuracy": sum(equation) / n, "eval_examples": len(test)}
        texts = [f"{f.problem.question} | numbers {' '.join(f'{x:g}' for x in f.problem.numbers)} | equation "
                 f"{' '.join(f.problem.equation)} | answer {f.problem.answer:g}" for f in test]
        return metrics, outcomes.binary([f.problem.uid for f in test], value, texts,
                                        {"equation_correct": [int(e) for e in equation]})


def _graph_edges(words: list[str], first: dict[int, int], slot_words: dict[int, int],
                 problem: Problem) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Graph2Tree's graphs over token positions (numbers and cells at their first sub-word).

    Quantity cell graph: each number with the cell words (`group_nums`) within 3 words of it, and cell words that
    are the same word. Quantity comparison graph: an edge from the larger number to the smaller (ties both ways).
    Self-loops are added when the adjacency is built."""
    numbers = {w: k for k, w in slot_words.items() if w in first}
    cells = [w for w in problem.groups if w in first and w not in numbers]
    cell: list[tuple[int, int]] = []
    for w in numbers:
        for c in cells:
            if abs(w - c) < 4:
                cell += [(first[w], first[c]), (first[c], first[w])]
    for c1 in cells:
        for c2 in cells:
            if c1 != c2 and words[c1] == words[c2]:
                cell.append((first[c1], first[c2]))
    comparison: list[tuple[int, int]] = []
    for w1, k1 in numbers.items():
        for w2, k2 in numbers.items():
            if w1 != w2 and problem.numbers[k1] >= problem.numbers[k2]:
                comparison.append((first[w1], first[w2]))
    return cell, comparison


def collate(examples: list[Features], pad_id: int, graphs: bool) -> dict[str, torch.Tensor]:
    """Padded tensors; the target trees' structure (see trees.TreeShape) is padded with -1."""
    batch = len(examples)
    width = max(len(f.input_ids) for f in examples)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention = torch.zeros(batch, width, dtype=torch.long)
    slots = max(1, max(len(f.num_pos) for f in examples))
    num_pos = torch.zeros(batch, slots, dtype=torch.long)
    for i, f in enumerate(examples):
        input_ids[i, : len(f.input_ids)] = torch.tensor(f.input_ids)
        attention[i, : len(f.input_ids)] = 1
        num_pos[i, : len(f.num_pos)] = torch.tensor(f.num_pos, dtype=torch.long)
    out = {"input_ids": input_ids, "attention_mask": attention, "num_pos": num_pos,
           "num_count": torch.tensor([len(f.num_pos) for f in examples])}
    if all(f.target is not None for f in examples):
        length = max(len(f.target) for f in examples)
        fields = ("parent", "is_right", "left_sibling", "left_child", "right_child", "depth", "height")
        tensors = {k: torch.full((batch, length), -1, dtype=torch.long) for k in ("target", *fields)}
        for i, f in enumerate(examples):
            shape = f.tree
            n = len(f.target)
            tensors["target"][i, :n] = torch.tensor(f.target)
            for k in fields:
                tensors[k][i, :n] = torch.tensor([int(v) for v in getattr(shape, k)])
        tensors["is_right"] = tensors["is_right"] == 1
        out.update(tensors)
    if graphs:
        adjacency = torch.zeros(batch, 2, width, width)
        for i, f in enumerate(examples):
            n = len(f.input_ids)
            adjacency[i, :, torch.arange(n), torch.arange(n)] = 1.0
            for g, edges in enumerate(f.graph_edges):
                if edges:
                    rows, cols = zip(*edges, strict=True)
                    adjacency[i, g, list(rows), list(cols)] = 1.0
        out["graphs"] = adjacency
    return out


describe_family("arithmetic", "gts (default) or graph2tree, optionally :<embedder> (minilm, roberta-base, random, "
                "a hub id or folder)")


@register_task("arithmetic/mawps", default_model="gts", folds=FOLDS, options=ArithmeticOptions)
def mawps(spec: TaskSpec) -> TaskRun:
    folder = Path("arithmetic/cv_mawps") / f"fold{spec.fold}"
    return ArithmeticRun(spec, "arithmetic/mawps", [folder / "train.csv"], [folder / "dev.csv"], batch_size=4)


@register_task("arithmetic/asdiv-a", default_model="gts", folds=FOLDS, options=ArithmeticOptions)
def asdiv_a(spec: TaskSpec) -> TaskRun:
    folder = Path("arithmetic/cv_asdiv-a") / f"fold{spec.fold}"
    return ArithmeticRun(spec, "arithmetic/asdiv-a", [folder / "train.csv"], [folder / "dev.csv"], batch_size=4)


@register_task("arithmetic/svamp", default_model="gts", options=ArithmeticOptions)
def svamp(spec: TaskSpec) -> TaskRun:
    # No folds: train on MAWPS + ASDiv-A, test on the 1,000 SVAMP problems.
    folder = Path("arithmetic/mawps-asdiv-a_svamp")
    return ArithmeticRun(spec, "arithmetic/svamp", [folder / "train.csv"], [folder / "dev.csv"], batch_size=8)
