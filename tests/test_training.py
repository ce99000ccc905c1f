import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from smcbench.errors import SmcBenchError
from smcbench.sparsity import GradualSchedule, RigLSchedule, Sparsifier
from smcbench.training import Callback, GradualPruning, MaskEnforcer, RigLUpdates, TrainConfig, train
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
    resumed = Regression(dropout=0.3)  # a fresh process: fresh weights, state from the checkpoint
    result = train(resumed, data(), collate, cfg, evaluate=lambda m: 0.0, callbacks=[Crash(-1)],
                   checkpoint_dir=tmp_path, progress=False)
    assert result.steps == 9
    assert torch.allclose(weights(resumed), weights(reference), atol=1e-6)


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
    assert sp.sparsity() == pytest.approx(0.5, abs=0.01)


def test_rigl_counts_optimizer_updates_not_micro_batches():
    # The official RigL schedule ignored gradient accumulation.
    model = Regression()
    sp = Sparsifier(model)
    sp.prune(0.5)
    rigl = RigLUpdates(sp, RigLSchedule(interval=2, end=6))
    train(model, data(64), collate, TrainConfig(lr=0.05, batch_size=4, grad_accum=2, max_steps=8),
          callbacks=[rigl, MaskEnforcer(sp)], progress=False)
    assert rigl.updates == 2  # updates 2 and 4; 6 is the end
    assert sp.sparsity() == pytest.approx(0.5, abs=1 / sum(m.numel() for m in sp.masks.values()))
    assert math.isclose(sum(int(m.sum()) for m in sp.masks.values()),
                        sum(m.numel() for m in sp.masks.values()) * 0.5, abs_tol=1)


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
