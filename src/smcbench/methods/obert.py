"""oBERT (Kurtic et al. 2022), the method of SMC-Bench's Appendix C: second-order saliency from a block-diagonal
empirical-Fisher inverse (sparsity.obert), global ranking, the OBS update of the kept weights at every pruning step.

It starts from the dense fine-tune (the paper's "after, gradual") and prunes on GMP's cubic schedule while training
on, with m fresh gradients at each pruning step; `one_shot: true` prunes the dense fine-tune once and retrains.
The rest of the recipe (embeddings and heads dense, learning-rate rewinding, distillation) is settings every method
takes (methods.recipe); the `paper-appendix-c` grid preset sets them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from pydantic import Field

from smcbench.methods.base import Experiment, Method, Outcome, register_method
from smcbench.methods.callbacks import GradualPruning
from smcbench.methods.paper import GMPSettings, retrain
from smcbench.sparsity import GradualSchedule, Sparsifier
from smcbench.sparsity.obert import (
    DEFAULT_BLOCK,
    DEFAULT_DAMP,
    DEFAULT_GRADIENTS,
    BlockFisherInverse,
    OBertScore,
    iter_gradients,
)


class OBertSettings(GMPSettings):
    obert_block: int = Field(DEFAULT_BLOCK, ge=1, description="oBERT: weights per Fisher block (B); memory is "
                             "B + min(16, B // 3) floats per pruned weight.")
    obert_gradients: int = Field(DEFAULT_GRADIENTS, ge=1, description="oBERT: gradients per Fisher estimate (m), "
                                 "fresh at every pruning step.")
    obert_grad_batch: int | None = Field(None, ge=1, description="oBERT: examples per gradient (default: the "
                                         "training batch size).")
    obert_damp: float = Field(DEFAULT_DAMP, gt=0, description="oBERT: Fisher dampening λ.")
    one_shot: bool = Field(False, description="oBERT: prune the dense fine-tune once, then retrain (default: "
                           "gradual, on GMP's schedule).")


class OBertStep:
    """One oBERT pruning step: m gradients → Fisher inverse → saliency → global mask → OBS update. Batches continue
    from one step to the next (fresh gradients each time), wrapping around the training set. Times are kept apart:
    collecting gradients vs the Fisher work (Woodbury updates, scores, the OBS update)."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self.batches = self._cycle()
        self.gradient_s = self.fisher_s = 0.0
        self.steps = self.unstable_blocks = 0

    def _cycle(self) -> Iterator[dict]:
        st = self.exp.settings
        while True:
            empty = True
            for batch in self.exp.score_batches(st.obert_grad_batch):
                empty = False
                yield batch
            if empty:
                return

    def __call__(self, sp: Sparsifier, target: float) -> None:
        st = self.exp.settings
        fisher = BlockFisherInverse({n: p.shape for n, p in sp.params.items()}, st.obert_block, st.obert_gradients,
                                    st.obert_damp, next(iter(sp.params.values())).device)
        clock = time.perf_counter()
        for grads in iter_gradients(sp.params, lambda b: self.exp.loss(sp.model, b), self.batches,
                                    st.obert_gradients):
            now = time.perf_counter()
            self.gradient_s += now - clock
            fisher.add(grads, sp.masks)  # the Fisher given the weights pruned so far stay zero
            clock = time.perf_counter()
            self.fisher_s += clock - now
        original = {n: p.detach().clone() for n, p in sp.params.items()}  # pruning zeroes w_Q; the update needs it
        sp.prune(target, OBertScore(fisher), "global")
        self.unstable_blocks += fisher.update_weights(sp.params, sp.masks, original)
        self.fisher_s += time.perf_counter() - clock
        self.steps += 1


@register_method
class OBert(Method):
    name = "obert"
    settings = OBertSettings
    # 2: Fisher from masked gradients during gradual pruning, float64 OBS solve with a guard. 3: gradients folded
    # into the inverses 16 at a time (a rank-16 Woodbury update: the same inverse up to rounding).
    version = 3
    needs_dense = True
    summary = "second-order (block Fisher) saliency + OBS update, gradual from the dense fine-tune (Kurtic et al.)"
    stage = "after"  # from the dense fine-tune: gradually (on GMP's schedule) or once, then retrained

    def extra_updates(self, settings: OBertSettings, updates: int, batch_size: int) -> float:
        # Each pruning step: m gradients (a forward and backward pass each, ~ an update) and the Fisher work, which
        # `bench second-order` measures at about the gradients' time.
        steps = 1 if settings.one_shot else len(GradualSchedule.over_training(
            0.5, updates, settings.interval_for(updates), settings.gmp_start, settings.gmp_end).steps())
        per_gradient = (settings.obert_grad_batch or batch_size) / batch_size
        return 2.0 * steps * settings.obert_gradients * per_gradient

    def run(self, exp: Experiment, sparsities: list[float]) -> Iterator[Outcome]:
        st = exp.settings
        for s in sparsities:
            model = exp.dense_model()
            sp = st.sparsifier(model)
            BlockFisherInverse.check_fits(sum(p.numel() for p in sp.params.values()), st.obert_block,
                                          next(iter(sp.params.values())).device)
            step = OBertStep(exp)
            if st.one_shot:
                step(sp, s)
                out = retrain(exp, model, sp, s, f"obert@{s:.3f}")
            else:
                schedule = GradualSchedule.over_training(s, exp.total_steps, st.interval_for(exp.total_steps),
                                                         st.gmp_start, st.gmp_end)
                out = retrain(exp, model, sp, s, f"obert@{s:.3f}", [GradualPruning(sp, schedule, step=step)],
                              schedule.steps())
                out.notes.update({"pruning_steps": schedule.steps(), **st.interval_notes(exp.total_steps)})
            out.notes.update({"fisher_gradients_s": round(step.gradient_s, 3), "fisher_work_s": round(step.fisher_s, 3),
                              "obs_unstable_blocks": step.unstable_blocks,
                              "fisher_memory_bytes": BlockFisherInverse.memory_bytes(
                                  sum(p.numel() for p in sp.params.values()), st.obert_block)})
            yield out
