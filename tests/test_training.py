
import subprocess
import sys

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

from smcbench.errors import SmcBenchError
from smcbench.methods import GradualPruning, MaskEnforcer, RigLUpdates
from smcbench.sparsity import GradualSchedule, RigLSchedule, Sparsifier, target_count
from smcbench.training import Callback, TrainConfig, train
from smcbench.training.loop import epoch_batches, linear_schedule


class Regression(nn.Module):
    def __init__(self, dropout: float = 0.0):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 1))

    def forward(self, x, y):
        return type("Out", (), {"loss": (self.body(x).squeeze(-1) - y).pow(2).mean()})()


def data(n=40):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=gen)
    y = x @ torch.arange(6.0) / 6
    return [(x[i], y[i]) for i in range(n)]


def collate(rows):
    return {"x": torch.stack([r[0] for r in rows]), "y": torch.stack([r[1] for r in rows])}


def weights(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@given(total=st.integers(1, 500), warmup=st.integers(0, 100))
def test_linear_schedule_matches_hugging_face(total, warmup):
    from transformers import get_linear_schedule_with_warmup

    warmup = min(warmup, total)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_linear_schedule_with_warmup(opt, warmup, total)
    for step in range(min(total, 30)):
        assert linear_schedule(step, total, warmup) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-9)
        opt.step()
        sched.step()


@given(lengths=st.lists(st.integers(1, 60), min_size=1, max_size=300), batch=st.integers(1, 16),
       bucket=st.booleans())
def test_epoch_batches_cover_every_example_once_and_are_deterministic(lengths, batch, bucket):
    batches = epoch_batches(lengths, batch, seed=3, epoch=1, bucket=bucket)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches == epoch_batches(lengths, batch, seed=3, epoch=1, bucket=bucket)


def test_length_bucketing_cuts_padding():
    lengths = [int(v) for v in torch.randint(5, 120, (2000,), generator=torch.Generator().manual_seed(0))]

    def padded(bucket):
        return sum(len(b) * max(lengths[i] for i in b) for b in epoch_batches(lengths, 8, 0, 0, bucket))

    assert padded(True) < 0.7 * padded(False)


def test_gradient_accumulation_matches_one_big_batch():
    big, small = Regression(), Regression()
    examples = data(16)
    train(big, examples, collate, TrainConfig(lr=0.1, batch_size=16, max_steps=1, bucket_by_length=False),
          progress=False)
    train(small, examples, collate, TrainConfig(lr=0.1, batch_size=4, grad_accum=4, max_steps=1,
                                                bucket_by_length=False), progress=False)
    assert torch.allclose(weights(big), weights(small), atol=1e-6)


def test_model_selection_restores_the_best_validation_checkpoint():
    model = Regression()
    scores = iter([0.1, 0.9, 0.3])
    seen = []

    def validate(m):
        seen.append(weights(m).clone())
        return next(scores)

    result = train(model, data(), collate, TrainConfig(lr=0.05, batch_size=8, max_steps=6, eval_every=2),
                   evaluate=validate, progress=False)
    assert result.best_step == 4 and result.best_metric == 0.9
    assert torch.equal(weights(model), seen[1])


class Crash(Callback):
    def __init__(self, at):
        self.at = at

    def on_step_end(self, state):
        if state.step == self.at:
            raise RuntimeError("simulated crash")


def test_resume_after_a_crash_gives_the_same_model(tmp_path):
    cfg = TrainConfig(lr=0.05, batch_size=8, max_steps=9, eval_every=3)
    reference = Regression(dropout=0.3)
    train(reference, data(), collate, cfg, evaluate=lambda m: 0.0, progress=False)

    crashed = Regression(dropout=0.3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashed, data(), collate, cfg, evaluate=lambda m: 0.0, callbacks=[Crash(5)],
              checkpoint_dir=tmp_path, progress=False)
    from smcbench.training.checkpoint import load_checkpoint

    before = load_checkpoint(tmp_path)[1]["seconds"]  # trained up to the checkpoint at step 3
    resumed = Regression(dropout=0.3)  # a fresh process: fresh weights, state from the checkpoint
    result = train(resumed, data(), collate, cfg, evaluate=lambda m: 0.0, callbacks=[Crash(-1)],
                   checkpoint_dir=tmp_path, progress=False)
    assert result.steps == 9
    assert torch.allclose(weights(resumed), weights(reference), atol=1e-6)
    # Regression: a run resumed at its last update recorded 2 s of training (the time after the interruption).
    assert before > 0 and result.resumed_s == before and result.seconds > before
    assert result.examples_per_second == result.examples_seen / result.seconds


class NoisyRegression(Regression):
    """Draws from every generator a training step may use: torch (dropout), Python's random, NumPy's."""

    def forward(self, x, y):
        import random

        import numpy as np

        noise = random.gauss(0, 0.1) + float(np.random.standard_normal()) * 0.1
        return type("Out", (), {"loss": (self.body(x).squeeze(-1) + noise - y).pow(2).mean()})()


@pytest.mark.parametrize("dropout_rng", ["torch", "pcg64"])
def test_resume_restores_every_generator_bit_for_bit(tmp_path, dropout_rng):
    """Regression: resume restored only torch's CPU generator, so a step drawing from Python's or NumPy's
    generator diverged after a resume. pcg64 dropout seeds its streams from torch's generator: covered too."""
    import random

    import numpy as np

    cfg = TrainConfig(lr=0.05, batch_size=8, max_steps=9, eval_every=3, dropout_rng=dropout_rng)
    reference = NoisyRegression(dropout=0.3)
    train(reference, data(), collate, cfg, evaluate=lambda m: 0.0, progress=False)

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(NoisyRegression(dropout=0.3), data(), collate, cfg, evaluate=lambda m: 0.0, callbacks=[Crash(5)],
              checkpoint_dir=tmp_path, progress=False)
    random.seed(123)  # a fresh process: its generators are wherever they are
    np.random.seed(456)
    torch.manual_seed(789)
    resumed = NoisyRegression(dropout=0.3)
    train(resumed, data(), collate, cfg, evaluate=lambda m: 0.0, callbacks=[Crash(-1)], checkpoint_dir=tmp_path,
          progress=False)
    assert torch.equal(weights(resumed), weights(reference))


def test_gmp_in_the_loop_ends_exactly_at_its_target():
    model = Regression()
    sp = Sparsifier(model)
    schedule = GradualSchedule.over_training(0.7, total_steps=20, interval=3)
    train(model, data(), collate, TrainConfig(lr=0.05, batch_size=4, max_steps=20),
          callbacks=[GradualPruning(sp, schedule), MaskEnforcer(sp)], progress=False)
    total = sum(m.numel() for m in sp.masks.values())
    assert sum(int((~m).sum()) for m in sp.masks.values()) == round(0.7 * total)
    assert all(torch.count_nonzero(p.detach()[~sp.masks[n]]) == 0 for n, p in sp.params.items())


def test_gmp_checkpoints_before_the_target_are_never_selected():
    model = Regression()
    sp = Sparsifier(model)
    schedule = GradualSchedule.over_training(0.5, total_steps=10, interval=2)
    scores = iter([1.0, 0.9, 0.8, 0.7, 0.6])  # the least sparse checkpoint validates best
    result = train(model, data(), collate, TrainConfig(lr=0.05, batch_size=4, max_steps=10, eval_every=2),
                   evaluate=lambda m: next(scores), callbacks=[GradualPruning(sp, schedule), MaskEnforcer(sp)],
                   progress=False)
    assert result.best_step == schedule.end == 8
    total = sum(m.numel() for m in sp.masks.values())
    assert sum(int((~m).sum()) for m in sp.masks.values()) == target_count(0.5, total)


def test_rigl_counts_optimizer_updates_not_micro_batches():
    # The official RigL schedule ignored gradient accumulation.
    model = Regression()
    sp = Sparsifier(model)
    sp.prune(0.5)
    rigl = RigLUpdates(sp, RigLSchedule(interval=2, end=6))
    train(model, data(64), collate, TrainConfig(lr=0.05, batch_size=4, grad_accum=2, max_steps=8),
          callbacks=[rigl, MaskEnforcer(sp)], progress=False)
    assert rigl.updates == 2  # updates 2 and 4; 6 is the end
    total = sum(m.numel() for m in sp.masks.values())
    assert sum(int((~m).sum()) for m in sp.masks.values()) == target_count(0.5, total)  # RigL keeps it exactly


def test_step_schedule_halves_every_step_epochs_like_steplr():
    from smcbench.training.loop import lr_factor

    cfg = TrainConfig(lr=1e-3, batch_size=4, epochs=50, schedule="step", step_epochs=20, step_gamma=0.5)
    per_epoch = cfg.updates_per_epoch(40)  # 10 updates an epoch
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    steplr = torch.optim.lr_scheduler.StepLR(opt, step_size=20, gamma=0.5)
    for epoch in range(50):
        for k in range(per_epoch):
            assert lr_factor(cfg, epoch * per_epoch + k, 500, per_epoch) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        steplr.step()


def test_lr_groups_give_matching_parameters_their_own_rate():
    from smcbench.training.loop import make_optimizer

    model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 2))
    cfg = TrainConfig(lr=1e-3, lr_groups={r"^0\.": 8e-6})
    assert cfg.lr_groups == ((r"^0\.", 8e-6),)
    opt = make_optimizer(model, cfg)
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(model[0].weight)] == 8e-6 and lrs[id(model[1].weight)] == lrs[id(model[1].bias)] == 1e-3
    with pytest.raises(SmcBenchError, match="lr_groups"):
        TrainConfig(lr_groups={"(": 1e-3})
    with pytest.raises(SmcBenchError, match="schedule"):
        TrainConfig(schedule="cosine")


def test_eval_epochs_sets_the_validation_interval():
    cfg = TrainConfig(batch_size=4, eval_epochs=2)
    assert cfg.validation_interval(40) == 20 and TrainConfig().validation_interval(40) is None
    assert TrainConfig(eval_every=3, eval_epochs=2).validation_interval(40) == 3


class Recorder(Callback):
    def __init__(self, name, order, log):
        self.name, self.order, self.log = name, order, log

    def on_after_backward(self, state):
        self.log.append((self.name, "after_backward", state.step))

    def on_evaluate_begin(self, state):
        self.log.append((self.name, "evaluate_begin", state.step))

    def on_evaluate_end(self, state):
        self.log.append((self.name, "evaluate_end", state.step))


def test_callbacks_run_in_their_declared_order_and_wrap_validation():
    log = []
    late, early = Recorder("late", 5, log), Recorder("early", -5, log)

    def validate(m):
        log.append(("loop", "evaluate", None))
        return 0.0

    train(Regression(), data(), collate, TrainConfig(lr=0.05, batch_size=8, max_steps=2, eval_every=2),
          evaluate=validate, callbacks=[late, early], progress=False)
    assert [e[:2] for e in log] == [("early", "after_backward"), ("late", "after_backward"),
                                    ("early", "after_backward"), ("late", "after_backward"),
                                    ("early", "evaluate_begin"), ("late", "evaluate_begin"), ("loop", "evaluate"),
                                    ("early", "evaluate_end"), ("late", "evaluate_end")]


class PullToThree(Callback):
    """Owns one parameter, adds (a - 3)² to the loss: the shape of a learned-sparsity method (gates + penalty)."""

    def __init__(self):
        self.a = nn.Parameter(torch.zeros(()))
        self.terms = 0

    def parameter_groups(self, model):
        return [{"params": [self.a], "lr": 0.1}]

    def loss(self, state, batch, outputs, loss):
        self.terms += 1
        assert outputs.loss is loss  # the task's output is there for terms that need it (distillation)
        return loss + (self.a - 3) ** 2

    def state_dict(self):
        return {"a": self.a.detach().clone()}

    def load_state_dict(self, state):
        if "a" in state:
            with torch.no_grad():
                self.a.copy_(state["a"])


def test_a_callback_adds_to_the_loss_and_trains_its_own_parameters_through_a_resume(tmp_path):
    cfg = TrainConfig(lr=0.05, batch_size=8, grad_accum=2, max_steps=9, eval_every=3)
    reference = PullToThree()
    train(Regression(), data(), collate, cfg, callbacks=[reference], progress=False)
    trained = float(reference.a.detach())
    assert reference.terms == 15  # once per micro-batch: 3 epochs of 5 batches (updates of 2, 2, 1)
    # AdamW moves it about lr per update towards 3; the schedule (linear decay over 9 updates) scales this group
    # too, so it gets 0.1 · (9 + 8 + ... + 1) / 9 = 0.5.
    assert trained == pytest.approx(0.5, abs=0.05)

    # Resume: the same run with validation (the best checkpoint, step 3, is restored at the end, callback state
    # included), crashed at step 5 and resumed, equals it uninterrupted.
    reference = PullToThree()
    train(Regression(), data(), collate, cfg, evaluate=lambda m: 0.0, callbacks=[reference], progress=False)

    first = PullToThree()
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(Regression(), data(), collate, cfg, evaluate=lambda m: 0.0, callbacks=[first, Crash(5)],
              checkpoint_dir=tmp_path, progress=False)
    resumed = PullToThree()
    train(Regression(), data(), collate, cfg, evaluate=lambda m: 0.0, callbacks=[resumed, Crash(-1)],
          checkpoint_dir=tmp_path, progress=False)
    assert float(resumed.a.detach()) == pytest.approx(float(reference.a.detach()), abs=1e-6)


class Rewind(Callback):
    """Learning-rate rewinding: the schedule restarts at update `at`."""

    def __init__(self, at):
        self.at, self.lrs = at, []

    def lr_factor(self, state, factor):
        return state.schedule(state.step - self.at) if state.step >= self.at else factor

    def on_step_end(self, state):
        self.lrs.append(state.optimizer.param_groups[0]["lr"])


def test_lr_factor_hook_can_rewind_the_schedule():
    rewind = Rewind(4)
    train(Regression(), data(), collate, TrainConfig(lr=0.1, batch_size=8, max_steps=8, warmup_ratio=0.25),
          callbacks=[rewind], progress=False)
    expected = [0.1 * linear_schedule(s if s < 4 else s - 4, 8, 2) for s in range(8)]
    assert rewind.lrs == pytest.approx(expected)

    frozen, model = Rewind(0), Regression()
    frozen.lr_factor = lambda state, factor: 0.0
    start = weights(model).clone()
    train(model, data(), collate, TrainConfig(lr=0.1, batch_size=8, max_steps=3), callbacks=[frozen], progress=False)
    assert torch.equal(weights(model), start)


@given(total=st.integers(2, 400), pct=st.floats(0.05, 0.9))
def test_one_cycle_schedule_matches_torch(total, pct):
    from smcbench.training.loop import lr_factor

    assume(float(pct * total) - 1 > 0)  # torch divides by zero when the rising phase has no step
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=total, pct_start=pct,
                                                anneal_strategy="cos", cycle_momentum=False)
    cfg = TrainConfig(schedule="one_cycle", warmup_ratio=pct)
    for step in range(min(total, 60)):
        assert lr_factor(cfg, step, total, 1) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6, abs=1e-12)
        opt.step()
        sched.step()


def test_schedules_are_a_registry():
    from smcbench.training import SCHEDULES, register_schedule

    assert {"linear", "step", "constant", "one_cycle"} <= set(SCHEDULES)

    @register_schedule("halfway")
    def halfway(cfg, step, total, per_epoch):
        return 1.0 if step < total // 2 else 0.5

    try:
        assert TrainConfig(schedule="halfway").schedule == "halfway"
    finally:
        del SCHEDULES["halfway"]


def test_the_loop_benchmarks_flop_count_is_six_n_t_plus_attention_per_real_token():
    from transformers import BertConfig, BertForMultipleChoice

    from smcbench.bench.loop import encoder_flops

    config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=16)
    model = BertForMultipleChoice(config)
    per_layer = 4 * 8 * 8 + 2 * 8 * 16  # Q, K, V, O and the two feed-forward matrices
    # One question, two choices of 3 and 5 real tokens (padding never counts).
    example = {"attention_mask": [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]}
    expected = sum(6 * 2 * per_layer * t + 12 * 2 * 8 * t * t for t in (3, 5))
    assert encoder_flops(model, [example]) == expected


def test_the_loop_benchmarks_matmul_ceiling_counts_the_padded_shapes_the_loop_forms():
    from transformers import BertConfig, BertForMultipleChoice

    from smcbench.bench.loop import matmul_ceiling

    config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=16)
    model = BertForMultipleChoice(config)
    per_layer = 4 * 8 * 8 + 2 * 8 * 16
    # Two questions of two choices; batch size 2 makes one batch, padded to its longest choice (6 tokens).
    examples = [{"attention_mask": [[1] * 3, [1] * 5]}, {"attention_mask": [[1] * 6, [1] * 2]}]
    out = matmul_ceiling(model, examples, [5, 6], batch_size=2, seed=0)
    rows = 4 * 6
    expected = 6 * rows * 2 * per_layer + 12 * 2 * 8 * 4 * 6 * 6
    assert out["padded_gflop"] * 1e9 == pytest.approx(expected, rel=1e-12)
    assert out["matmul_s"] > 0


def test_training_flops_counts_each_example_alone_and_leaves_the_model_as_it_was():
    from transformers import BertConfig, BertModel

    from smcbench.bench.measure import training_flops

    config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=16, attn_implementation="sdpa")
    model = BertModel(config, add_pooling_layer=False).train()
    per_layer = 4 * 8 * 8 + 2 * 8 * 16

    def collate(examples):
        return {"input_ids": torch.tensor(examples)}

    def loss(m, batch):
        return m(**batch).last_hidden_state.sum()

    # 30 distinct lengths: the degree-two fit over a few of them, then every example from it.
    examples = [[1] * t for t in range(2, 32)] + [[1] * 7]
    expected = sum(6 * 2 * per_layer * len(e) + 12 * 2 * 8 * len(e) ** 2 for e in examples)
    rng = torch.get_rng_state()
    assert training_flops(model, collate, loss, examples, lambda e: (len(e),)) == pytest.approx(expected, rel=1e-9)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)

    # Work of degree three in the length is off any degree-two fit: then each length is counted alone.
    def cubic(m, batch):
        h = m(**batch).last_hidden_state[0]
        return (h @ h.T @ (h @ h.T)).sum()

    cubic_part = sum(6 * len(e) ** 3 + 96 * len(e) ** 2 for e in examples)  # h·hᵀ twice, their product; backward 2x
    assert training_flops(model, collate, cubic, examples, lambda e: (len(e),)) == expected + cubic_part


_TRAIN_A_FEW_STEPS = """
import hashlib, sys, torch
from smcbench.training.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.manual_seed(0)
layer = torch.nn.TransformerEncoderLayer(64, 4, 256, dropout=0.1, batch_first=True)
opt = torch.optim.AdamW(layer.parameters())
for step in range(4):
    x = torch.randn(8, 40 + 30 * step, 64)
    layer(x).square().mean().backward()
    opt.step()
    opt.zero_grad()
print(hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in layer.parameters())).hexdigest())
"""


def test_keeping_freed_memory_changes_no_result():
    """The allocator setting only moves where tensors live: the same training, bit for bit (each in a fresh
    process, since the setting is process-wide)."""
    def run(mode: str) -> str:
        out = subprocess.run([sys.executable, "-c", _TRAIN_A_FEW_STEPS, mode], capture_output=True, text=True,
                             check=True)
        return out.stdout.strip()

    assert run("keep") == run("default")


def test_keeping_freed_memory_can_be_turned_off_by_the_environment():
    import os

    code = "from smcbench.training.allocator import keep_freed_memory; print(keep_freed_memory())"
    env = {**os.environ, "SMCBENCH_KEEP_FREED_MEMORY": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"


def _tied_seq2seq():
    from transformers import MBartConfig, MBartForConditionalGeneration

    torch.manual_seed(3)
    config = MBartConfig(vocab_size=61, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                         d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                         decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=32,
                         tie_word_embeddings=True, dropout=0.1)
    return MBartForConditionalGeneration(config)


def _pairs(n=24):
    gen = torch.Generator().manual_seed(4)
    return [(torch.randint(3, 61, (int(torch.randint(3, 9, (), generator=gen)),), generator=gen).tolist(),
             torch.randint(3, 61, (int(torch.randint(3, 9, (), generator=gen)),), generator=gen).tolist())
            for _ in range(n)]


def _collate_pairs(rows):
    def pad(seqs, value):
        longest = max(len(s) for s in seqs)
        return torch.tensor([s + [value] * (longest - len(s)) for s in seqs])

    src, tgt = [r[0] + [2] for r in rows], [r[1] + [2] for r in rows]
    return {"input_ids": pad(src, 1), "attention_mask": pad([[1] * len(s) for s in src], 0),
            "labels": pad(tgt, -100)}


def test_an_odd_width_tied_head_trains_through_its_padded_weight_to_the_same_bits():
    """61 output columns, the head tied to both embeddings (three gradients meet in one weight): training through
    the padded head gives the plain head's model bit for bit, and the model keeps its own head."""
    from unittest import mock

    from smcbench.training import heads

    cfg = TrainConfig(lr=1e-2, batch_size=6, max_steps=4, weight_decay=0.01)
    padded, plain = _tied_seq2seq(), _tied_seq2seq()
    head = padded.get_output_embeddings()
    heads._AGREED.clear()
    with mock.patch.object(heads, "_PaddedProduct", wraps=heads._PaddedProduct) as product:
        train(padded, _pairs(), _collate_pairs, cfg, progress=False)
    assert product.apply.call_count == 1 + 4 and padded.get_output_embeddings() is head  # the probe, the 4 steps
    assert padded.get_output_embeddings().weight is padded.get_input_embeddings().weight  # still tied
    with mock.patch("smcbench.training.loop.padded_head", lambda model: heads.contextlib.nullcontext(False)):
        train(plain, _pairs(), _collate_pairs, cfg, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(padded.state_dict().values(), plain.state_dict().values(),
                                                 strict=True))
