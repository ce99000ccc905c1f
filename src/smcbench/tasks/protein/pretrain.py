"""`esm-tiny`: a small ESM-2-shaped model that smc-bench pretrains itself by masked-language modelling, since no
protein language model ships its weights in a package here.

Corpus (a `PretrainCorpus`, chosen by the task): for HP-S2C2 / HP-S2C5, the HotProtein sequences on this machine
(both datasets, every fold) minus every sequence of the evaluation (test) split of the folds held out; for a task
with one fixed split (HP-S, Meltome), its training split only. No test sequence is ever seen: the folder records
the held-out sequences, and a task refuses to evaluate test sequences that are not among them. Objective: ESM's
masked LM (15 % of residues: 80 % <mask>, 10 % a random residue, 10 % unchanged). The result is a normal
`transformers` folder (EsmForMaskedLM + EsmTokenizer) cached under $SMCBENCH_CACHE (default ~/.cache/smcbench).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from smcbench.cache import cache_dir
from smcbench.errors import SmcBenchError
from smcbench.pretraining import RECORD, LossCurve, ensure_built, write_folder
from smcbench.tasks.protein.data import S2C2_FOLDS, S2C5_FOLDS, read_s2c2, read_s2c5
from smcbench.tasks.protein.model import write_esm_vocab

TINY_NAME = "esm-tiny"
# ESM-2's shape (rotary positions, token dropout, pre-LN), scaled down to train on a laptop CPU.
TINY_SHAPE = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512,
              "max_position_embeddings": 1026}
# Sized for a laptop CPU: about 0.75 s an update on this 2-core machine (1,500 updates of 16 x 256 residues:
# ~19 minutes alone; 1,794 s measured with other work beside it).
PRETRAIN_DEFAULTS = {"steps": 1500, "batch_size": 16, "max_residues": 256, "lr": 1e-3, "seed": 0}


def sequence_key(sequence: str) -> str:
    return hashlib.sha256(sequence.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class PretrainCorpus:
    """What esm-tiny is pretrained on: `name` names the cached folder (esm-tiny-<name>)."""

    name: str
    description: str
    sequences: list[str]
    held_out: set[str]  # keys (sequence_key) of the evaluation sequences kept out
    held_out_folds: tuple[int, ...] = field(default=())

    @staticmethod
    def build(name: str, description: str, sequences: Iterable[str], held_out: Iterable[str],
              held_out_folds: tuple[int, ...] = ()) -> PretrainCorpus:
        """Leaves out every held-out sequence wherever it appears, and duplicates after the first."""
        keys = {sequence_key(s) for s in held_out}
        seen: set[str] = set()
        kept = []
        for sequence in sequences:
            key = sequence_key(sequence)
            if key not in keys and key not in seen:
                seen.add(key)
                kept.append(sequence)
        return PretrainCorpus(name, description, kept, keys, held_out_folds)


def hotprotein_corpus(data_dir: Path, exclude_folds: tuple[int, ...]) -> PretrainCorpus:
    """HP-S2C2 + HP-S2C5, every fold's train and test split, minus the test sequences of the excluded folds (of
    either dataset)."""
    held_out = [p.sequence for k in exclude_folds for p in [*read_s2c2(data_dir, k, "test"),
                                                            *read_s2c5(data_dir, k, "test")]]
    proteins = [p for k in range(S2C2_FOLDS) for s in ("train", "test") for p in read_s2c2(data_dir, k, s)]
    proteins += [p for k in range(S2C5_FOLDS) for s in ("train", "test") for p in read_s2c5(data_dir, k, s)]
    return PretrainCorpus.build(
        f"heldout-{'-'.join(map(str, exclude_folds))}",
        "HotProtein HP-S2C2 + HP-S2C5 sequences (every fold, train and test splits), minus the test sequences of "
        "the held-out folds; duplicates once", (p.sequence for p in proteins), held_out, exclude_folds)


def tiny_folder(corpus_name: str = "heldout-0") -> Path:
    return cache_dir() / "models" / f"{TINY_NAME}-{corpus_name}"


def mask_tokens(ids: torch.Tensor, special: torch.Tensor, mask_id: int, first_residue: int, vocab: int,
                rate: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT/ESM masking of the non-special positions: (inputs, labels with -100 where nothing is predicted)."""
    chosen = (torch.rand(ids.shape) < rate) & ~special
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape)
    inputs = ids.clone()
    inputs[chosen & (roll < 0.8)] = mask_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[swap] = torch.randint(first_residue, vocab, ids.shape)[swap]
    return inputs, labels


def pretrain_tiny(corpus: PretrainCorpus, out: Path | None = None, progress: bool = True,
                  **overrides: Any) -> Path:
    """Pretrain esm-tiny by masked LM on `corpus` and save it; returns the folder."""
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    from smcbench.training import TrainConfig, train

    settings = {**PRETRAIN_DEFAULTS, **overrides}
    out = out or tiny_folder(corpus.name)
    sequences = corpus.sequences
    if not sequences:
        raise SmcBenchError(f"{TINY_NAME}: the pretraining corpus {corpus.name!r} is empty")

    def fill(tmp: Path) -> None:
        tokenizer = EsmTokenizer(str(write_esm_vocab(tmp)))
        config = EsmConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                           mask_token_id=tokenizer.mask_token_id, position_embedding_type="rotary",
                           token_dropout=True, emb_layer_norm_before=False, **TINY_SHAPE)
        torch.manual_seed(settings["seed"])
        model = EsmForMaskedLM(config)
        cut = settings["max_residues"]
        encoded = tokenizer([s[:cut] for s in sequences])["input_ids"]
        first_residue = tokenizer.convert_tokens_to_ids("L")
        specials = torch.tensor(tokenizer.all_special_ids)

        def collate(rows: list[list[int]]) -> dict[str, torch.Tensor]:
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, : len(r)] = torch.tensor(r)
            inputs, labels = mask_tokens(ids, torch.isin(ids, specials), tokenizer.mask_token_id, first_residue,
                                         len(tokenizer))
            return {"input_ids": inputs, "attention_mask": (ids != tokenizer.pad_token_id).long(), "labels": labels}

        cfg = TrainConfig(lr=settings["lr"], batch_size=settings["batch_size"], max_steps=max(1, settings["steps"]),
                          warmup_ratio=0.05, weight_decay=0.01, seed=settings["seed"])
        torch.manual_seed(settings["seed"] + 1)
        log = LossCurve(collate(encoded[:64]), every=max(1, settings["steps"] // 10))  # one fixed masked batch
        start = time.perf_counter()
        if settings["steps"]:  # 0: keep the random initialisation (the control for "pretraining helps")
            train(model, encoded, collate, cfg, lengths=[len(e) for e in encoded], callbacks=[log],
                  progress=progress, description="pretrain esm-tiny")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / RECORD).write_text(json.dumps({
            "model": TINY_NAME, "objective": "masked LM (15 %: 80 % mask, 10 % random, 10 % kept)",
            "corpus": corpus.description, "corpus_name": corpus.name,
            "held_out_folds": list(corpus.held_out_folds), "held_out_sequences": sorted(corpus.held_out),
            "corpus_sequences": len(sequences), "settings": settings, "mlm_loss_by_step": log.losses,
            "seconds": time.perf_counter() - start, "shape": TINY_SHAPE}, indent=1))

    return write_folder(out, fill)


def check_held_out(folder: Path, test_sequences: list[str], what: str, remedy: str) -> None:
    """Refuse to evaluate on sequences the model may have been pretrained on: every test sequence must be one the
    pretraining held out. `what` names the evaluation split, `remedy` how to get a model that held it out."""
    record = folder / RECORD
    if not record.is_file():
        return  # not pretrained by smc-bench: its provenance is the hub id or folder
    held = json.loads(record.read_text()).get("held_out_sequences")
    if held is None:
        return  # pretrained elsewhere (AntiBERTy: antibodies only): its record names the corpus
    held_out = set(held)
    leaked = [s for s in test_sequences if sequence_key(s) not in held_out]
    if leaked:
        raise SmcBenchError(f"{folder}: this model was pretrained on {len(leaked)} test sequence(s) of {what}; "
                            f"{remedy}")


def ensure_tiny(corpus_name: str, build_corpus: Callable[[], PretrainCorpus], command: str) -> Path:
    """The cached esm-tiny pretrained on the corpus `corpus_name`, pretrained first if missing (one process at a
    time; `build_corpus` reads the data only then); `command` is the CLI that builds it."""
    return ensure_built(tiny_folder(corpus_name), RECORD,
                        lambda folder: pretrain_tiny(build_corpus(), folder, progress=False),
                        f"pretraining {TINY_NAME} on {corpus_name}, a few minutes",
                        command=command)
