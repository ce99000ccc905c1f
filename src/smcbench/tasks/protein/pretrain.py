"""`esm-tiny`: a small ESM-2-shaped model that smc-bench pretrains itself by masked-language modelling, since no
protein language model ships its weights in a package here.

Corpus: the HotProtein sequences on this machine (HP-S2C2 and HP-S2C5) minus every sequence of the evaluation
(test) split of the folds named in `exclude_folds`, so no test sequence is ever seen. The folder records which folds
were held out; a task refuses to evaluate a fold whose test sequences were in the corpus. Objective: ESM's masked
LM (15 % of residues: 80 % <mask>, 10 % a random residue, 10 % unchanged). The result is a normal `transformers`
folder (EsmForMaskedLM + EsmTokenizer) cached under $SMCBENCH_CACHE (default ~/.cache/smcbench).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from smcbench.errors import SmcBenchError
from smcbench.tasks.protein.data import S2C2_FOLDS, S2C5_FOLDS, read_s2c2, read_s2c5
from smcbench.tasks.protein.model import write_esm_vocab
from smcbench.training import Callback, LoopState

TINY_NAME = "esm-tiny"
RECORD = "smcbench_pretraining.json"
# ESM-2's shape (rotary positions, token dropout, pre-LN), scaled down to train on a laptop CPU.
TINY_SHAPE = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512,
              "max_position_embeddings": 1026}
# Sized for a laptop CPU: about 0.75 s an update on this 2-core machine (1,500 updates of 16 x 256 residues:
# ~19 minutes alone; 1,794 s measured with other work beside it).
PRETRAIN_DEFAULTS = {"steps": 1500, "batch_size": 16, "max_residues": 256, "lr": 1e-3, "seed": 0}


def cache_dir() -> Path:
    return Path(os.environ.get("SMCBENCH_CACHE", Path.home() / ".cache" / "smcbench"))


def tiny_folder(exclude_folds: tuple[int, ...] = (0,)) -> Path:
    return cache_dir() / "models" / f"{TINY_NAME}-heldout-{'-'.join(map(str, exclude_folds))}"


def sequence_key(sequence: str) -> str:
    return hashlib.sha256(sequence.encode()).hexdigest()[:20]


def corpus(data_dir: Path, exclude_folds: tuple[int, ...]) -> tuple[list[str], set[str]]:
    """(training sequences, keys of the held-out test sequences). Every fold's train + test split is read; a
    sequence in the test split of an excluded fold (of either dataset) is left out wherever it appears."""
    held_out = {sequence_key(p.sequence) for k in exclude_folds
                for p in [*read_s2c2(data_dir, k, "test"), *read_s2c5(data_dir, k, "test")]}
    seen: set[str] = set()
    out = []
    proteins = [p for k in range(S2C2_FOLDS) for s in ("train", "test") for p in read_s2c2(data_dir, k, s)]
    proteins += [p for k in range(S2C5_FOLDS) for s in ("train", "test") for p in read_s2c5(data_dir, k, s)]
    for p in proteins:
        key = sequence_key(p.sequence)
        if key in held_out or key in seen:
            continue
        seen.add(key)
        out.append(p.sequence)
    return out, held_out


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


def pretrain_tiny(data_dir: Path, exclude_folds: tuple[int, ...] = (0,), out: Path | None = None,
                  progress: bool = True, **overrides: Any) -> Path:
    """Pretrain esm-tiny by masked LM and save it; returns the folder."""
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    from smcbench.training import TrainConfig, train

    settings = {**PRETRAIN_DEFAULTS, **overrides}
    out = out or tiny_folder(exclude_folds)
    sequences, held_out = corpus(data_dir, exclude_folds)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".esm-tiny."))  # renamed into place when complete
    try:
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
        log = _LossLog(collate(encoded[:64]), every=max(1, settings["steps"] // 10))  # one fixed masked batch
        start = time.perf_counter()
        if settings["steps"]:  # 0: keep the random initialisation (the control for "pretraining helps")
            train(model, encoded, collate, cfg, lengths=[len(e) for e in encoded], callbacks=[log],
                  progress=progress, description="pretrain esm-tiny")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / RECORD).write_text(json.dumps({
            "model": TINY_NAME, "objective": "masked LM (15 %: 80 % mask, 10 % random, 10 % kept)",
            "corpus": "HotProtein HP-S2C2 + HP-S2C5 sequences (every fold, train and test splits), minus the test "
                      "sequences of the held-out folds; duplicates once",
            "held_out_folds": list(exclude_folds), "held_out_sequences": sorted(held_out),
            "corpus_sequences": len(sequences), "settings": settings, "mlm_loss_by_step": log.losses,
            "seconds": time.perf_counter() - start, "shape": TINY_SHAPE}, indent=1))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


class _LossLog(Callback):
    """The masked-LM loss on one fixed batch every `every` updates: the pretraining curve in the record."""

    def __init__(self, batch: dict[str, torch.Tensor], every: int) -> None:
        self.batch, self.every, self.losses = batch, every, {}

    def on_step_end(self, state: LoopState) -> None:
        if state.step % self.every == 0 or state.step == state.total_steps:
            state.model.eval()
            with torch.no_grad():
                self.losses[state.step] = float(state.model(**self.batch).loss)
            state.model.train()


def check_held_out(folder: Path, test_sequences: list[str], fold: int | None) -> None:
    """Refuse to evaluate on sequences the model was pretrained on."""
    record = folder / RECORD
    if not record.is_file():
        return  # not pretrained by smc-bench: its provenance is the hub id or folder
    held_out = set(json.loads(record.read_text())["held_out_sequences"])
    leaked = [s for s in test_sequences if sequence_key(s) not in held_out]
    if leaked:
        raise SmcBenchError(f"{folder}: this model was pretrained on {len(leaked)} test sequence(s) of fold {fold}; "
                            f"pretrain one that holds fold {fold} out (smc-bench pretrain esm-tiny --exclude-folds "
                            f"{fold})")


def ensure_tiny(data_dir: Path, exclude_folds: tuple[int, ...]) -> Path:
    """The cached esm-tiny that holds `exclude_folds` out, pretrained first if missing (one process at a time)."""
    import fcntl

    folder = tiny_folder(exclude_folds)
    if (folder / RECORD).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second worker waits, then finds it
        if not (folder / RECORD).is_file():
            print(f"pretraining {TINY_NAME} (folds {list(exclude_folds)} held out) into {folder}: once, a few minutes",
                  flush=True)
            pretrain_tiny(data_dir, exclude_folds, folder, progress=False)
    return folder


def model_provenance(folder: Path) -> dict[str, Any]:
    """Where a model folder came from: its pretraining record (without the held-out keys), else the folder."""
    record = folder / RECORD
    if not record.is_file():
        return {"folder": str(folder)}
    data = json.loads(record.read_text())
    data.pop("held_out_sequences", None)
    return {"folder": str(folder), "pretraining": data}
