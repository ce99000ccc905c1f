"""`smc-bench bench second-order`: the cost of oBERT's Fisher and of SparseGPT / Wanda next to what they replace.

On MiniLM (the offline pretrained model) with a multiple-choice head, batches shaped like CSQA's (5 choices, 64
tokens; random token ids: cost does not depend on the text), pruning the encoder's Linear weights (Appendix C's
`encoder` preset):
- oBERT: seconds to collect m gradients vs seconds of the Fisher work (Woodbury updates, saliency + global mask,
  the OBS update), the inverses' size (d·B floats) and the process's peak memory; what RoBERTa-large would need.
- SparseGPT and Wanda: seconds per layer and for the whole model (calibration passes included) beside global
  magnitude pruning of the same weights.
Each part runs in its own process so peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from smcbench.bench.measure import in_subprocess, peak_rss_mb

# RoBERTa-large's encoder Linear weights: 24 layers × (Q, K, V, O: 1024², FFN: 2 × 1024 × 4096).
ROBERTA_LARGE_ENCODER_WEIGHTS = 24 * (4 * 1024 * 1024 + 2 * 1024 * 4096)


def _setup(batch_size: int, length: int, model_name: str):
    from smcbench.models import load_pretrained
    from smcbench.sparsity import Sparsifier

    torch.manual_seed(0)
    model = load_pretrained(model_name, "AutoModelForMultipleChoice")
    model.train()
    vocab = model.config.vocab_size

    def batches():
        gen = torch.Generator().manual_seed(1)
        while True:
            yield {"input_ids": torch.randint(1000, vocab, (batch_size, 5, length), generator=gen),
                   "attention_mask": torch.ones(batch_size, 5, length, dtype=torch.long),
                   "labels": torch.randint(0, 5, (batch_size,), generator=gen)}

    return model, Sparsifier(model, "encoder"), batches


def measure_obert(model_name: str, gradients: int, block: int, batch_size: int, length: int) -> dict:
    from smcbench.sparsity.obert import BlockFisherInverse, OBertScore, iter_gradients

    model, sp, batches = _setup(batch_size, length, model_name)
    numel = sum(p.numel() for p in sp.params.values())
    fisher = BlockFisherInverse({n: p.shape for n, p in sp.params.items()}, block, gradients)
    gradient_s = woodbury_s = 0.0
    clock = time.perf_counter()
    for grads in iter_gradients(sp.params, lambda b: model(**b).loss, batches(), gradients):
        now = time.perf_counter()
        gradient_s += now - clock
        fisher.add(grads)
        clock = time.perf_counter()
        woodbury_s += clock - now
    original = {n: p.detach().clone() for n, p in sp.params.items()}
    start = time.perf_counter()
    sp.prune(0.5, OBertScore(fisher), "global")
    mask_s = time.perf_counter() - start
    start = time.perf_counter()
    fisher.update_weights(sp.params, sp.masks, original)
    update_s = time.perf_counter() - start
    return {"part": "obert", "weights": numel, "gradients": gradients, "block": block, "batch_size": batch_size,
            "gradient_s": gradient_s, "woodbury_s": woodbury_s, "mask_s": mask_s, "obs_update_s": update_s,
            "inverse_mb": BlockFisherInverse.memory_bytes(numel, block) / 2**20, "peak_rss_mb": peak_rss_mb(),
            "roberta_large_weights": ROBERTA_LARGE_ENCODER_WEIGHTS}


def measure_layerwise(model_name: str, calibration_batches: int, batch_size: int, length: int) -> dict:
    from smcbench.sparsity.calibration import Hessian, SquaredNorms, prune_layerwise
    from smcbench.sparsity.posttraining import sparsegpt_prune_layer, wanda_prune_layer

    out: dict = {"part": "layerwise", "calibration_examples": calibration_batches * batch_size}
    for name, statistics, prune_one in (("sparsegpt", Hessian, sparsegpt_prune_layer),
                                        ("wanda", SquaredNorms, wanda_prune_layer)):
        model, sp, batches = _setup(batch_size, length, model_name)
        gen = batches()
        calibration = [next(gen) for _ in range(calibration_batches)]
        per_layer: list[float] = []

        def prune(layer, weight, mask, stats, per_layer=per_layer, prune_one=prune_one):
            start = time.perf_counter()
            prune_one(weight, mask, stats, 0.5)
            per_layer.append(time.perf_counter() - start)

        start = time.perf_counter()
        prune_layerwise(model, sp.params, sp.masks, prune, statistics, lambda b, m=model: m(**b), calibration)
        out[name] = {"total_s": time.perf_counter() - start, "layers": len(per_layer),
                     "solve_s_per_layer": sum(per_layer) / len(per_layer), "solve_s_max": max(per_layer)}
    model, sp, _ = _setup(batch_size, length, model_name)
    start = time.perf_counter()
    sp.prune(0.5, "magnitude", "global")
    out["magnitude"] = {"total_s": time.perf_counter() - start, "layers": len(sp.params)}
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def run(model: str = "minilm", gradients: int = 1024, block: int = 50, calibration_batches: int = 16,
        batch_size: int = 8, length: int = 64) -> list[dict]:
    common = ["--model", model, "--batch-size", str(batch_size), "--length", str(length)]
    return [in_subprocess(__name__, "obert", "--gradients", str(gradients), "--block", str(block), *common),
            in_subprocess(__name__, "layerwise", "--calibration-batches", str(calibration_batches), *common)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=["obert", "layerwise"])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--gradients", type=int, default=1024)
    parser.add_argument("--block", type=int, default=50)
    parser.add_argument("--calibration-batches", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.part == "obert":
        result = measure_obert(args.model, args.gradients, args.block, args.batch_size, args.length)
    else:
        result = measure_layerwise(args.model, args.calibration_batches, args.batch_size, args.length)
    print(json.dumps(result))


if __name__ == "__main__":
    main()


def render(obert: dict, layerwise: dict, model: str, gradients: int, block: int, batch_size: int,
           length: int) -> str:
    fisher_s = obert["woodbury_s"] + obert["mask_s"] + obert["obs_update_s"]
    lines = [f"{model}, encoder Linear weights ({obert['weights'] / 1e6:.2f}M), batches of {batch_size} questions x "
             f"5 choices x {length} tokens; each part in its own process",
             f"  oBERT, m = {gradients} gradients, B = {block}: gradients {obert['gradient_s']:.1f} s, Fisher work "
             f"{fisher_s:.1f} s (Woodbury {obert['woodbury_s']:.1f}, mask {obert['mask_s']:.1f}, OBS update "
             f"{obert['obs_update_s']:.1f}) = {fisher_s / obert['gradient_s']:.2f}x the gradients"]
    from smcbench.sparsity.obert import BlockFisherInverse

    roberta = obert["roberta_large_weights"]
    roberta_gb = BlockFisherInverse.memory_bytes(roberta, block) / 2**30
    lines.append(f"  oBERT memory: inverses and waiting gradients {obert['inverse_mb']:.0f} MB (d·(B + k) floats), "
                 f"process peak {obert['peak_rss_mb']:.0f} MB; RoBERTa-large's encoder ({roberta / 1e6:.0f}M "
                 f"weights) at B = {block}: {roberta_gb:.1f} GB (B = 8: "
                 f"{BlockFisherInverse.memory_bytes(roberta, 8) / 2**30:.1f} GB)")
    mag = layerwise["magnitude"]["total_s"]
    for name in ("sparsegpt", "wanda"):
        r = layerwise[name]
        lines.append(f"  {name:<9} {r['total_s']:6.1f} s for {r['layers']} layers with "
                     f"{layerwise['calibration_examples']} calibration questions (solve {r['solve_s_per_layer']:.2f} s "
                     f"per layer, at most {r['solve_s_max']:.2f})  = {r['total_s'] / mag:.0f}x global magnitude "
                     f"({mag:.2f} s)")
    return "\n".join(lines)
