"""`smc-bench bench loop`: our training loop vs a plain Hugging Face `Trainer`, side by side.

Same model (MiniLM), data (the first N CSQA training questions, the same tokenisation), batch size, learning rate,
linear schedule without warmup, no weight decay (Trainer's default), gradient clipping at 1.0, one epoch, dynamic
padding (`DataCollatorForMultipleChoice` for the Trainer). Each side runs in its own subprocess; both evaluate on the
same first M dev questions. Reports questions/s of training and accuracy, and the model FLOP utilisation (MFU)
of each: the forward and backward FLOPs of the real (unpadded) tokens trained on per second, over the fp32 matmul
peak measured in the same process just before training (bench.measure.matmul_peak_gflops). FLOPs of a sequence of
T real tokens: 6·N·T for the N weights of the encoder's Linear layers (2 a weight forward, 4 backward) plus
12·L·d·T² for attention's two products in L layers of width d; embeddings, norms and the head are left out, so
MFU understates the work slightly (and padding, which costs time, counts as none).

Our loop runs twice: with torch's dropout (the default, its masks drawn by training.dropout's fast mt19937 stream,
bit for bit torch's; its results are the benchmark's) and with `dropout_rng: pcg64` (the same training with
masks from another stream: different masks, so its accuracy is a different draw, printed beside). Our loop also
keeps freed memory in the heap (training.allocator), as it does in every CPU run; the Trainer's process runs with
glibc's defaults and torch's own dropout kernel, as a user's would.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from smcbench.bench.measure import in_subprocess, matmul_peak_gflops
from smcbench.training.dropout import TORCH_KERNEL, masks_drawn_by


def _task(train_size: int, eval_size: int, max_length: int, data_dir: str | None):
    from smcbench.tasks import TaskSpec, get_task

    return get_task(TaskSpec("commonsense/csqa", "minilm", data_dir, train_size=train_size, val_size=200,
                             eval_size=eval_size, max_length=max_length))


def encoder_flops(model: torch.nn.Module, examples: list) -> float:
    """Training FLOPs (forward + backward) of the real tokens of `examples` (multiple-choice features: per choice
    an attention mask), as the module docstring counts them."""
    weights = sum(a * b * n for (a, b), n in _linear_shapes(model).items())
    layers, width = model.config.num_hidden_layers, model.config.hidden_size
    total = 0.0
    for features in examples:
        for mask in features["attention_mask"]:
            t = sum(mask)
            total += 6 * weights * t + 12 * layers * width * t * t
    return total


def _linear_shapes(model: torch.nn.Module) -> dict[tuple[int, int], int]:
    """(in, out) of the encoder's Linear layers, with how many share each shape."""
    shapes: dict[tuple[int, int], int] = {}
    for m in model.base_model.encoder.modules():
        if isinstance(m, torch.nn.Linear):
            shapes[(m.in_features, m.out_features)] = shapes.get((m.in_features, m.out_features), 0) + 1
    return shapes


def _timed_mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> float:
    """The product's time warm (the best of two after a first call): a first call on freshly written operands runs
    at half speed or worse (threads waking, caches cold), which the loop's back-to-back products do not pay."""
    torch.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_ceiling(model: torch.nn.Module, examples: list, lengths: list[int], batch_size: int, seed: int,
                   every: int = 10) -> dict:
    """What the loop's own matrix products cost alone: the MFU a loop doing nothing else would reach.

    Every `every`-th batch of the epoch as the loop forms it (length-bucketed, padded to the batch's longest choice)
    gives the shapes; for each, the forward and both backward products of every encoder Linear and of attention's
    two products run on random tensors of those shapes, each timed warm; the sampled time is scaled to the epoch
    by its share of the epoch's padded FLOPs. The FLOPs MFU counts (real tokens only) over that time, over the peak,
    is the ceiling: what is left between it and the loop's MFU is everything that is not a matmul (dropout,
    softmax, norms, the optimizer, Python), and what is left above it is padding and the GEMMs' efficiency at these
    small shapes, which no loop change reaches."""
    from smcbench.training.loop import epoch_batches

    shapes = _linear_shapes(model)
    layers, width = model.config.num_hidden_layers, model.config.hidden_size
    heads = model.config.num_attention_heads
    gen = torch.Generator().manual_seed(0)
    sampled_s = sampled_flops = all_flops = 0.0
    for i, batch in enumerate(epoch_batches(lengths, batch_size, seed, 0, True)):
        sequences = sum(len(examples[j]["attention_mask"]) for j in batch)
        longest = max(len(m) for j in batch for m in examples[j]["attention_mask"])
        rows = sequences * longest
        linear = sum(6 * rows * a * b * n for (a, b), n in shapes.items())
        attention = 12 * layers * width * sequences * longest**2
        all_flops += linear + attention
        if i % every:
            continue
        sampled_flops += linear + attention
        for (a, b), n in shapes.items():
            x, g, w = (torch.randn(*s, generator=gen) for s in ((rows, a), (rows, b), (b, a)))
            y, gx, gw = torch.empty(rows, b), torch.empty(rows, a), torch.empty(b, a)
            sampled_s += n * (_timed_mm(x, w.t(), y) + _timed_mm(g, w, gx) + _timed_mm(g.t(), x, gw))
        dh = width // heads
        q, k, p = (torch.randn(sequences * heads, *s, generator=gen)
                   for s in ((longest, dh), (longest, dh), (longest, longest)))
        scores, grad = torch.empty(sequences * heads, longest, longest), torch.empty(sequences * heads, longest, dh)
        # Scores Q·Kᵀ and context P·V, each forward and its two backward products (same shapes in pairs).
        products = [(q, k.transpose(1, 2), scores), (p, k, grad), (p.transpose(1, 2), q, grad)] * 2
        sampled_s += layers * sum(_timed_mm(*mm) for mm in products)
    seconds = sampled_s * all_flops / sampled_flops
    return {"matmul_s": seconds, "padded_gflop": all_flops / 1e9, "matmul_gflops": all_flops / seconds / 1e9}


def _with_mfu(out: dict, flops: float, peak: float) -> dict:
    achieved = flops / out["train_s"] / 1e9
    return {**out, "train_gflop": flops / 1e9, "achieved_gflops": achieved, "peak_gflops": peak,
            "mfu": achieved / peak}


def run_ours(args: argparse.Namespace) -> dict:
    from smcbench.training import TrainConfig, train

    task = _task(args.train_size, args.eval_size, args.max_length, args.data_dir)
    examples, lengths = task.train_examples()
    model = task.initial_model()
    cfg = TrainConfig(lr=args.lr, weight_decay=0.0, warmup_ratio=0.0, batch_size=args.batch_size, epochs=1.0,
                      seed=args.seed, dropout_rng=args.dropout_rng)
    flops = encoder_flops(model, examples)
    peak = matmul_peak_gflops()
    result = train(model, examples, task.collate, cfg, lengths=lengths, progress=False)
    out = {"side": "ours", "dropout": masks_drawn_by(args.dropout_rng, torch.device("cpu")), "train_s": result.seconds,
           "questions": result.examples_seen, "questions_per_s": result.examples_per_second,
           "accuracy": task.evaluate(model)["accuracy"]}
    out = _with_mfu(out, flops, peak)
    if not args.ceiling:
        return out
    ceiling = matmul_ceiling(model, examples, lengths, args.batch_size, args.seed)
    return {**out, **ceiling, "ceiling_mfu": flops / ceiling["matmul_s"] / 1e9 / peak}


def run_trainer(args: argparse.Namespace) -> dict:
    import tempfile

    from transformers import DataCollatorForMultipleChoice, Trainer, TrainingArguments

    task = _task(args.train_size, args.eval_size, args.max_length, args.data_dir)
    examples, _ = task.train_examples()
    rows = [{"input_ids": f["input_ids"], "token_type_ids": f["token_type_ids"],
             "attention_mask": f["attention_mask"], "label": f["label"]} for f in examples]
    model = task.initial_model()
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
            num_train_epochs=1, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
            logging_strategy="no", save_strategy="no", report_to=[], seed=args.seed, use_cpu=True,
            disable_tqdm=True, dataloader_num_workers=0,
        )
        trainer = Trainer(model=model, args=targs, train_dataset=rows,
                          data_collator=DataCollatorForMultipleChoice(task.tokenizer))
        flops = encoder_flops(model, examples)
        peak = matmul_peak_gflops()
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    out = {"side": "trainer", "dropout": TORCH_KERNEL, "train_s": seconds, "questions": len(rows),
           "questions_per_s": len(rows) / seconds, "accuracy": task.evaluate(model)["accuracy"]}
    return _with_mfu(out, flops, peak)


PHASES = ("collate", "forward", "backward", "sparsity callbacks", "optimizer")


def profile(steps: int = 20, sparsity: float = 0.5, max_length: int = 64, batch_size: int = 8,
            data_dir: str | None = None) -> dict:
    """Where a training step's time goes: our loop on CSQA with masks enforced at `sparsity`, under
    torch.profiler; the loop's phases and the heaviest operators, in ms per step."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from smcbench.methods import MaskEnforcer
    from smcbench.sparsity import Sparsifier
    from smcbench.training import TrainConfig, train

    task = _task(steps * batch_size, 50, max_length, data_dir)
    examples, lengths = task.train_examples()
    model = task.initial_model()
    sp = Sparsifier(model)
    sp.prune(sparsity)
    cfg = TrainConfig(batch_size=batch_size, max_steps=steps)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        result = train(model, examples, task.collate, cfg, lengths=lengths, callbacks=[MaskEnforcer(sp)],
                       progress=False)
    events = prof.key_averages()
    step_ms = result.seconds * 1000 / steps
    phases = {e.key: e.cpu_time_total / 1000 / steps for e in events if e.key in PHASES}
    ops = sorted((e for e in events if e.key.startswith("aten::")), key=lambda e: -e.self_cpu_time_total)[:10]
    return {"step_ms": step_ms, "phases_ms": phases,
            "top_ops_self_ms": {e.key: e.self_cpu_time_total / 1000 / steps for e in ops}}


def run(train_size: int = 2000, eval_size: int = 600, batch_size: int = 8, lr: float = 5e-5,
        max_length: int = 64, seed: int = 0, data_dir: str | None = None) -> dict:
    common = ["--train-size", str(train_size), "--eval-size", str(eval_size), "--batch-size", str(batch_size),
              "--lr", str(lr), "--max-length", str(max_length), "--seed", str(seed)]
    if data_dir:
        common += ["--data-dir", data_dir]
    trainer = in_subprocess(__name__, "--side", "trainer", *common)
    ours = in_subprocess(__name__, "--side", "ours", "--ceiling", *common)
    pcg64 = in_subprocess(__name__, "--side", "ours", "--dropout-rng", "pcg64", *common)
    return {"trainer": trainer, "ours": ours, "ours_pcg64": pcg64,
            "speedup": ours["questions_per_s"] / trainer["questions_per_s"],
            "speedup_pcg64": pcg64["questions_per_s"] / trainer["questions_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=("ours", "trainer"), required=True)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--eval-size", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--dropout-rng", default="torch")
    parser.add_argument("--ceiling", action="store_true", help="Also time the loop's matmuls alone.")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(args.seed)
    print(json.dumps(run_ours(args) if args.side == "ours" else run_trainer(args)))


if __name__ == "__main__":
    main()


def render_profile(prof: dict, batch_size: int) -> str:
    lines = [f"our loop, MiniLM on CSQA at 50 % sparsity, batch {batch_size}: {prof['step_ms']:.0f} ms a step"]
    for name, ms in prof["phases_ms"].items():
        lines.append(f"  {name:<20} {ms:7.1f} ms  {ms / prof['step_ms']:6.1%}")
    lines.append("  heaviest operators (self time):")
    for name, ms in prof["top_ops_self_ms"].items():
        lines.append(f"    {name:<36} {ms:7.1f} ms")
    return "\n".join(lines)


def render(out: dict, train_size: int, eval_size: int, batch_size: int, max_length: int) -> str:
    lines = [f"MiniLM on the first {train_size} CSQA questions, batch {batch_size}, 1 epoch, max length {max_length}"]
    for side, label in (("trainer", "trainer"), ("ours", "ours"), ("ours_pcg64", "ours, pcg64 dropout")):
        r = out[side]
        drawn = f"  (dropout: {r['dropout']})" if "dropout" in r else ""
        lines.append(f"  {label:<20} {r['questions_per_s']:6.2f} questions/s ({r['train_s']:6.1f} s)  "
                     f"accuracy {r['accuracy']:.3f} on {eval_size} dev questions  "
                     f"MFU {r['mfu']:.1%} ({r['achieved_gflops']:.0f} of {r['peak_gflops']:.0f} GFLOP/s peak){drawn}")
    lines.append(f"  speed-up {out['speedup']:.2f}x (with pcg64 dropout {out['speedup_pcg64']:.2f}x); "
                 f"{out['ours']['train_gflop']:.0f} GFLOP of real tokens")
    ours = out["ours"]
    if "ceiling_mfu" in ours:
        lines.append(f"  ceiling: our loop's matmuls alone (its padded shapes, {ours['padded_gflop']:.0f} GFLOP) take "
                     f"{ours['matmul_s']:.1f} s at {ours['matmul_gflops']:.0f} GFLOP/s: MFU {ours['ceiling_mfu']:.1%} "
                     f"if nothing else took time; the loop reaches {ours['mfu'] / ours['ceiling_mfu']:.0%} of that")
    return "\n".join(lines)
