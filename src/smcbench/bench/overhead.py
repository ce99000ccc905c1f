"""`smc-bench bench overhead`: what a method adds to a training step, against the same step dense.

MiniLM multiple choice (8 questions × 5 choices × 64 tokens, fused AdamW). Each kind of step on its own copy of the
model, stepped in turn (the order rotating every round, so machine noise and cache warmth hit all alike); medians:
- `dense`: plain fine-tuning;
- `masked`: masks enforced at 50 % (gradients masked, weights re-zeroed): the step of GMP, RigL between updates, and
  every fixed-mask retraining;
- `variational_dropout`, `l0`: the learned-sparsity step (their per-weight parameters in the optimizer, their
  forward wrappers and penalty), through the callback the method trains with;
- `vd_floor`: what any exact sparse VD step pays on top of the masked one, and nothing more: the local
  reparameterisation's second product (x² against σ², forward and both backward products) in every selected Linear
  and AdamW over the σ² of those weights; no noise, no exp, no KL. VD's step over this one is what an implementation
  can still win; this one over `masked` is the method's arithmetic (each Linear's matmul work doubles).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smcbench.methods.callbacks import LearnedSparsityTraining
from smcbench.models import load_pretrained
from smcbench.sparsity import Sparsifier
from smcbench.sparsity.learned import L0Gates, VariationalDropout, _input
from smcbench.sparsity.selection import select_prunable
from smcbench.training.allocator import keep_freed_memory
from smcbench.training.callbacks import LoopState
from smcbench.training.dropout import dropout_mode

KINDS = ("dense", "masked", "variational_dropout", "vd_floor", "l0")
LEARNED = ("variational_dropout", "vd_floor", "l0")


class _VDFloor(VariationalDropout):
    """Sparse VD reduced to its unavoidable matrix products (the `vd_floor` kind)."""

    def forward_output(self, name: str, module: nn.Module, run, args: tuple, kwargs: dict) -> Tensor:
        out = run(None)
        if isinstance(module, nn.Embedding):  # the looked-up rows' noise is elementwise, no product
            return out
        return out + F.linear(_input(args, kwargs).square(), self.extra[name])

    def penalty(self) -> Tensor:
        return torch.zeros(())


def _batch(vocab: int, questions: int, choices: int, length: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (questions, choices, length), generator=gen)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.randint(0, choices, (questions,), generator=gen),
    }


def _stepper(kind: str, model: torch.nn.Module, batch: dict, sparsity: float) -> tuple[Callable[[], float], Callable]:
    """One timed training step of `kind`, and a check run after the timing (returns extra figures)."""
    groups: list[dict] = [{"params": list(model.parameters())}]
    callback = sparsifier = None
    if kind in LEARNED:
        params = select_prunable(model)
        learner = {"variational_dropout": VariationalDropout, "vd_floor": _VDFloor, "l0": L0Gates}[kind](model, params)
        callback = LearnedSparsityTraining(learner, 1.0, 0, 1e-2)
        groups += callback.parameter_groups(model)
    # Fused AdamW, as the training loop uses: 5x faster on CPU than the foreach default, whose sqrt is slow on
    # the exact zeros that pruned weights' moments hold (that alone would cost a sparse model +30 ms a step).
    opt = torch.optim.AdamW(groups, lr=5e-5, weight_decay=0.01, fused=True)
    state = LoopState(model, opt, 0, 1000)
    if kind == "masked":
        sparsifier = Sparsifier(model)
        sparsifier.attach_optimizer(opt)
        sparsifier.prune(sparsity)
    if callback is not None:
        callback.on_train_begin(state)
    model.train()

    def step() -> float:
        start = time.perf_counter()
        with dropout_mode("torch", torch.device("cpu")):  # the loop's forward: torch's masks, drawn fast
            out = model(**batch)
        loss = out.loss if callback is None else callback.loss(state, batch, out, out.loss)
        loss.backward()
        if sparsifier is not None:
            sparsifier.mask_gradients()
        opt.step()
        if sparsifier is not None:
            sparsifier.after_step()
        opt.zero_grad(set_to_none=True)
        state.step += 1
        return time.perf_counter() - start

    def check() -> dict:
        if sparsifier is not None:
            nonzero = sum(int(torch.count_nonzero(p.detach()[~sparsifier.masks[n]]))
                          for n, p in sparsifier.params.items())
            return {"sparsity": sparsifier.sparsity(), "pruned_weights_nonzero": nonzero}
        return {}

    return step, check


def run(model: str = "minilm", steps: int = 10, warmup: int = 2, sparsity: float = 0.5,
        questions: int = 8, choices: int = 5, length: int = 64, kinds: tuple[str, ...] = KINDS) -> dict:
    keep_freed_memory()  # the steps are the training loop's, so is the allocator setting it makes on CPU
    torch.manual_seed(0)
    reference = load_pretrained(model)
    batch = _batch(reference.config.vocab_size, questions, choices, length)
    steppers = {}
    for kind in kinds:
        copy = load_pretrained(model)
        copy.load_state_dict(reference.state_dict())
        steppers[kind] = _stepper(kind, copy, batch, sparsity)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(warmup + steps):
        order = list(kinds[i % len(kinds):]) + list(kinds[: i % len(kinds)])  # rotate who goes first
        for kind in order:
            t = steppers[kind][0]()
            if i >= warmup:
                times[kind].append(t)
    out: dict = {"steps": steps, "kinds": list(kinds)}
    for kind in kinds:
        out[f"{kind}_step_s"] = statistics.median(times[kind])
        out.update({f"{kind}_{k}": v for k, v in steppers[kind][1]().items()})
    if "dense" in kinds:
        for kind in kinds:
            out[f"{kind}_vs_dense"] = out[f"{kind}_step_s"] / out["dense_step_s"]
    if "masked" in kinds:
        for kind in LEARNED:
            if kind in kinds:
                out[f"{kind}_vs_masked"] = out[f"{kind}_step_s"] / out["masked_step_s"]
    if "vd_floor" in kinds and "variational_dropout" in kinds:
        out["variational_dropout_vs_floor"] = out["variational_dropout_step_s"] / out["vd_floor_step_s"]
    if "masked" in kinds and "dense" in kinds:
        out["ratio"] = out["masked_vs_dense"]  # the figure this benchmark always printed
    return out


def render(out: dict, model: str, steps: int) -> str:
    lines = [f"training step, {model}, 8 x 5 x 64 tokens, fused AdamW, median of {steps} steps each, in turn"]
    for kind in out["kinds"]:
        line = f"  {kind:<20} {out[f'{kind}_step_s']:.3f} s"
        if f"{kind}_vs_dense" in out:
            line += f"  {out[f'{kind}_vs_dense']:.2f}x dense"
        if f"{kind}_vs_masked" in out:
            line += f"  {out[f'{kind}_vs_masked']:.2f}x masked (GMP's step)"
        if kind == "variational_dropout" and "variational_dropout_vs_floor" in out:
            line += f"  {out['variational_dropout_vs_floor']:.2f}x vd_floor"
        if f"{kind}_sparsity" in out:
            line += (f"  (sparsity {out[f'{kind}_sparsity']:.3f}, pruned weights nonzero after training: "
                     f"{out[f'{kind}_pruned_weights_nonzero']})")
        lines.append(line)
    return "\n".join(lines)
