"""The optimizer step alone: AdamW over a model's parameters, fused (what the loop uses on CPU and CUDA) against
torch's multi-tensor (`foreach`) and per-tensor implementations, the three stepped alternately on the same
gradients so that the machine's state is shared. The figures behind the README's "fused AdamW" claim."""

from __future__ import annotations

import statistics
import time

import torch

IMPLEMENTATIONS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "per-tensor": {"foreach": False}}


def run(model: str = "minilm", steps: int = 10, warmup: int = 2) -> dict:
    from smcbench.models import load_pretrained

    base = load_pretrained(model, "AutoModel")
    params = {}
    for name, spec in IMPLEMENTATIONS.items():
        copies = [p.detach().clone().requires_grad_(True) for p in base.parameters()]
        gen = torch.Generator().manual_seed(0)
        for p in copies:
            p.grad = torch.randn(p.shape, generator=gen) * 1e-3
        params[name] = (copies, torch.optim.AdamW(copies, lr=1e-4, weight_decay=0.01, **spec))
    times: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    for step in range(warmup + steps):
        for name, (_, opt) in params.items():
            start = time.perf_counter()
            opt.step()
            if step >= warmup:
                times[name].append(time.perf_counter() - start)
    # The three implement one update rule: the weights they reach must agree.
    reference = params["per-tensor"][0]
    worst = max((a - b).abs().max().item() for name in ("fused", "foreach")
                for a, b in zip(params[name][0], reference, strict=True))
    out = {"model": model, "parameters": sum(p.numel() for p in reference), "steps": steps,
           "threads": torch.get_num_threads(), "max_abs_difference": worst}
    for name in IMPLEMENTATIONS:
        out[f"{name}_step_s"] = statistics.median(times[name])
    return out


def render(out: dict) -> str:
    lines = [f"AdamW step over {out['model']}'s {out['parameters'] / 1e6:.1f}M parameters, median of {out['steps']} "
             f"alternating steps, {out['threads']} threads"]
    for name in IMPLEMENTATIONS:
        lines.append(f"  {name:<11} {out[f'{name}_step_s'] * 1e3:8.1f} ms")
    for name in ("foreach", "per-tensor"):
        lines.append(f"  fused is {out[f'{name}_step_s'] / out['fused_step_s']:.2f}x faster than {name}")
    lines.append(f"  largest weight difference after {out['steps'] + 2} steps: {out['max_abs_difference']:.2e}")
    return "\n".join(lines)
