"""`smc-bench bench protein`: seconds per training epoch, evaluation seconds and peak memory of protein models on
one HP-S2C2 fold, each model in its own process: `esm-tiny` (pretrained here) and the 8M-parameter ESM-2 shape
(esm2_t6_8M_UR50D: 6 layers, hidden 320, 20 heads) with random weights. Length bucketing pads each batch only to its
longest sequence; the padding fraction of an epoch is reported beside the time, and the model FLOP utilisation
(MFU): the training FLOPs of the real tokens (bench.measure.training_flops) per second, over the fp32 matmul peak
measured in the same process just before training."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from smcbench.bench.measure import in_subprocess, matmul_peak_gflops, peak_rss_mb, training_flops
from smcbench.training.dropout import masks_drawn_by

ESM2_8M = {"hidden_size": 320, "num_hidden_layers": 6, "num_attention_heads": 20, "intermediate_size": 1280,
           "max_position_embeddings": 1026}


def _esm2_8m_random(folder: Path) -> str:
    from transformers import EsmConfig, EsmModel, EsmTokenizer

    from smcbench.tasks.protein.model import write_esm_vocab

    tokenizer = EsmTokenizer(str(write_esm_vocab(folder)))
    config = EsmConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                       mask_token_id=tokenizer.mask_token_id, position_embedding_type="rotary", token_dropout=True,
                       emb_layer_norm_before=False, **ESM2_8M)
    torch.manual_seed(0)
    EsmModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def measure(model: str, fold: int, epochs: int, batch_size: int, max_residues: int | None,
            data_dir: str | None, dropout_rng: str = "torch") -> dict:
    from smcbench.tasks import TaskSpec, get_task
    from smcbench.training import TrainConfig, train
    from smcbench.training.loop import epoch_batches

    with tempfile.TemporaryDirectory() as tmp:
        path = _esm2_8m_random(Path(tmp) / "esm2-8m") if model == "esm2-8m-random" else model
        options = {"max_residues": max_residues} if max_residues else {}
        task = get_task(TaskSpec("protein/hp-s2c2", path, data_dir, fold=fold, options=options))
        examples, lengths = task.train_examples()
        net = task.initial_model()
        params = sum(p.numel() for p in net.parameters())
        cfg = TrainConfig(**{**task.train_defaults(), "batch_size": batch_size, "epochs": float(epochs),
                             "eval_epochs": None, "dropout_rng": dropout_rng})
        flops = epochs * training_flops(net, task.collate, task.loss, examples, lambda f: (len(f.input_ids),))
        peak = matmul_peak_gflops()
        result = train(net, examples, task.collate, cfg, lengths=lengths, loss_fn=task.loss, progress=False)
        start = time.perf_counter()
        metrics = task.evaluate(net)
        eval_s = time.perf_counter() - start
    def padding(bucket: bool) -> float:  # the fraction of an epoch's token slots that are padding
        batches = epoch_batches(lengths, batch_size, 0, 0, bucket)
        return 1 - sum(lengths) / sum(len(b) * max(lengths[i] for i in b) for b in batches)

    return {"model": model, "dropout": masks_drawn_by(dropout_rng, torch.device("cpu")), "params": params,
            "train_examples": len(examples), "epochs": epochs,
            "seconds_per_epoch": result.seconds / epochs, "eval_s": eval_s, "eval_examples": metrics["eval_examples"],
            "accuracy": metrics["accuracy"], "peak_rss_mb": peak_rss_mb(), "longest_tokens": max(lengths),
            "cut_train_sequences": metrics["cut_train_sequences"],
            "padding_fraction": padding(True), "padding_fraction_without_bucketing": padding(False),
            "achieved_gflops": flops / result.seconds / 1e9, "peak_gflops": peak,
            "mfu": flops / result.seconds / 1e9 / peak}


def run(models: tuple[str, ...], fold: int = 0, epochs: int = 1, batch_size: int = 8,
        max_residues: int | None = None, data_dir: str | None = None, dropout_rng: str = "torch") -> list[dict]:
    args = ["--fold", str(fold), "--epochs", str(epochs), "--batch-size", str(batch_size), "--dropout-rng",
            dropout_rng]
    args += ["--max-residues", str(max_residues)] if max_residues else []
    args += ["--data-dir", data_dir] if data_dir else []
    return [in_subprocess(__name__, "--model", m, *args) for m in models]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-residues", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--dropout-rng", default="torch")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(json.dumps(measure(args.model, args.fold, args.epochs, args.batch_size, args.max_residues,
                             args.data_dir, args.dropout_rng)))


if __name__ == "__main__":
    main()


def render(out: list[dict], fold: int, batch_size: int, epochs: int) -> str:
    drawn = out[0]["dropout"]  # one setting for every model of a run
    lines = [f"HP-S2C2 fold {fold}, batch {batch_size}, {epochs} epoch(s), dropout: {drawn}, each model in its own "
             "process"]
    for r in out:
        lines.append(f"  {r['model']:<16} {r['params'] / 1e6:6.2f}M params  {r['seconds_per_epoch']:7.1f} s/epoch "
                     f"({r['train_examples']} sequences, longest {r['longest_tokens']} tokens, padding "
                     f"{r['padding_fraction']:.1%} vs {r['padding_fraction_without_bucketing']:.1%} unbucketed)  eval "
                     f"{r['eval_s']:5.1f} s  peak {r['peak_rss_mb']:6.0f} MB  accuracy {r['accuracy']:.3f}  "
                     f"MFU {r['mfu']:.1%} ({r['achieved_gflops']:.0f} of {r['peak_gflops']:.0f} GFLOP/s)")
    if len(out) > 1:
        lines.append(f"  {out[1]['model']} / {out[0]['model']}: "
                     f"{out[1]['seconds_per_epoch'] / out[0]['seconds_per_epoch']:.2f}x the time per epoch")
    return "\n".join(lines)
