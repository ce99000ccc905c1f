"""Sparse variational dropout and L0 gates in the engine: the published formulas, against Monte-Carlo."""

import math

import pytest
import torch
from torch import nn

from smcbench.errors import SmcBenchError
from smcbench.sparsity.learned import (
    L0_GAMMA,
    L0Gates,
    VariationalDropout,
    gate_open_probability,
    hard_concrete_deterministic,
    hard_concrete_sample,
    vd_kl,
)


def true_neg_kl_up_to_constant(log_alpha, samples=2_000_000):
    """Molchanov et al. eq. 13: −KL = ½ log α − E_{ε~N(1, α)} log|ε| + C."""
    gen = torch.Generator().manual_seed(0)
    alpha = math.exp(log_alpha)
    eps = 1 + math.sqrt(alpha) * torch.randn(samples, generator=gen, dtype=torch.float64)
    return 0.5 * log_alpha - eps.abs().log().mean().item()


def test_vd_kl_approximation_follows_the_true_kl_at_several_log_alphas():
    points = [-3.0, -1.0, 0.0, 1.0, 2.0, 4.0]
    true = [true_neg_kl_up_to_constant(a) for a in points]
    approx = [-vd_kl(torch.tensor(a)).item() for a in points]
    # The constant C cancels in differences; the published fit is within ~0.01 nats.
    for i in range(1, len(points)):
        assert (approx[i] - approx[0]) == pytest.approx(true[i] - true[0], abs=0.03)
    assert vd_kl(torch.tensor(20.0)).item() == pytest.approx(0.0, abs=1e-6)  # α → ∞: the prior itself
    assert vd_kl(torch.tensor(-5.0)) > vd_kl(torch.tensor(0.0)) > vd_kl(torch.tensor(5.0))  # decreasing in α


def test_local_reparameterisation_matches_sampled_weights_in_distribution():
    torch.manual_seed(0)
    layer = nn.Linear(6, 3)
    vd = VariationalDropout(layer, {"weight": layer.weight})
    with torch.no_grad():
        vd.extra["weight"].copy_(torch.randn(3, 6) * 0.5 - 2)
    vd.install()
    x = torch.randn(1, 6)
    n = 40_000
    local = torch.stack([layer(x)[0] for _ in range(n // 100) for _ in range(100)]).detach()
    sigma = vd.extra["weight"].exp().sqrt().detach()
    w = layer.weight.detach() + sigma * torch.randn(n, 3, 6)
    sampled = (w @ x[0]) + layer.bias.detach()
    torch.testing.assert_close(local.mean(0), sampled.mean(0), atol=0.03, rtol=0.0)
    torch.testing.assert_close(local.var(0), sampled.var(0), rtol=0.05, atol=1e-3)
    vd.remove()
    torch.testing.assert_close(layer(x), x @ layer.weight.T + layer.bias)  # no hook, no noise


def test_vd_evaluation_drops_weights_above_the_threshold_and_embeddings_get_row_noise():
    torch.manual_seed(1)
    emb, lin = nn.Embedding(10, 4), nn.Linear(4, 2)
    model = nn.Sequential(emb, lin)
    vd = VariationalDropout(model, {"0.weight": emb.weight, "1.weight": lin.weight})
    with torch.no_grad():
        vd.extra["1.weight"][0, :] = 5.0  # log σ² = 5: log α ≫ 3 for row 0
    vd.install()
    model.eval()
    ids = torch.tensor([[1, 2, 3]])
    out = model(ids)
    expected = emb(ids) @ (lin.weight * torch.tensor([[0.0], [1.0]])).T + lin.bias
    torch.testing.assert_close(out, expected)
    assert not vd.kept()["1.weight"][0].any() and vd.kept()["1.weight"][1].all()
    model.train()
    assert not torch.equal(model(ids), model(ids))  # noise in training
    with pytest.raises(SmcBenchError, match="not .only. the weight of Linear or Embedding layers"):
        gru = nn.GRU(4, 4)
        VariationalDropout(gru, {"weight_ih_l0": gru.weight_ih_l0})


def test_hard_concrete_samples_lie_in_the_unit_interval_with_exact_zeros_and_ones():
    torch.manual_seed(2)
    z = hard_concrete_sample(torch.zeros(100_000))
    assert z.min() == 0.0 and z.max() == 1.0 and ((z > 0) & (z < 1)).any()
    assert (z == 0).float().mean() > 0.05 and (z == 1).float().mean() > 0.05
    assert hard_concrete_deterministic(torch.tensor([-10.0, 10.0])).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("log_alpha", [-3.0, -0.5, 0.0, 1.0, 4.0])
def test_expected_l0_equals_a_monte_carlo_estimate(log_alpha):
    torch.manual_seed(3)
    z = hard_concrete_sample(torch.full((400_000,), log_alpha))
    assert gate_open_probability(torch.tensor(log_alpha)).item() == pytest.approx((z > 0).float().mean().item(),
                                                                                  abs=0.005)
    assert L0_GAMMA < 0  # the stretch that makes exact zeros possible


def test_l0_gates_scale_weights_and_fold_into_them():
    torch.manual_seed(4)
    lin = nn.Linear(5, 3)
    gates = L0Gates(lin, {"weight": lin.weight}, initial_keep=0.9)
    assert gates.penalty().item() == pytest.approx(gate_open_probability(torch.tensor(math.log(9))).item(), abs=0.01)
    with torch.no_grad():
        gates.extra["weight"][0] = -10.0  # row 0 closed
    gates.install()
    lin.eval()
    x = torch.randn(2, 5)
    z = hard_concrete_deterministic(gates.extra["weight"].detach())
    torch.testing.assert_close(lin(x), x @ (lin.weight * z).T + lin.bias)
    assert gates.reached_sparsity() == pytest.approx(5 / 15)
    expected = lin(x).detach()
    gates.fold()
    gates.remove()
    torch.testing.assert_close(lin(x), expected)
    assert (lin.weight[0] == 0).all()
    state = gates.state_dict()
    other = L0Gates(lin, {"weight": lin.weight})
    other.load_state_dict(state)
    assert torch.equal(other.extra["weight"], gates.extra["weight"])


# --- in the training loop ---------------------------------------------------------------------------------------

from smcbench.methods.callbacks import LearnedSparsityTraining  # noqa: E402
from smcbench.training import TrainConfig, train  # noqa: E402
from test_training import Crash, Regression, collate, data  # noqa: E402


def learned(kind, model, **kw):
    params = {n: p for n, p in model.named_parameters() if n.endswith("weight")}
    return VariationalDropout(model, params, **kw) if kind == "vd" else L0Gates(model, params, **kw)


@pytest.mark.parametrize("kind, weight", [("vd", 3.0), ("l0", 10.0)])
def test_a_large_penalty_drives_a_tiny_model_sparse_and_zero_leaves_it_dense(kind, weight):
    cfg = TrainConfig(lr=0.01, batch_size=8, max_steps=150)
    model = Regression()
    strong = learned(kind, model)
    train(model, data(), collate, cfg, callbacks=[LearnedSparsityTraining(strong, weight, 10, 0.1)], progress=False)
    assert strong.reached_sparsity() > 0.5
    model = Regression()
    none = learned(kind, model)
    train(model, data(), collate, cfg, callbacks=[LearnedSparsityTraining(none, 0.0, 0, 0.1)], progress=False)
    assert none.reached_sparsity() < 0.05


@pytest.mark.parametrize("kind", ["vd", "l0"])
def test_learned_parameters_resume_from_a_checkpoint_mid_training(kind, tmp_path):
    cfg = TrainConfig(lr=0.01, batch_size=8, max_steps=9, eval_every=3)

    def run(callbacks, folder=None):
        model = Regression()
        learner = learned(kind, model)
        torch.manual_seed(5)  # the gates' / noise's samples follow the run's RNG, restored from checkpoints
        train(model, data(), collate, cfg, evaluate=lambda m: 0.0, checkpoint_dir=folder, progress=False,
              callbacks=[LearnedSparsityTraining(learner, 1.0, 3, 0.05), *callbacks])
        return model, learner

    reference, ref_learner = run([Crash(-1)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        run([Crash(5)], tmp_path)
    resumed, res_learner = run([Crash(-1)], tmp_path)
    for name, p in ref_learner.extra.items():
        torch.testing.assert_close(res_learner.extra[name], p, atol=1e-6, rtol=0)
    torch.testing.assert_close(list(resumed.parameters())[0], list(reference.parameters())[0], atol=1e-6, rtol=0)


def test_tied_weights_are_gated_in_every_module_using_them_and_subclass_extras_stay():
    class ScaledEmbedding(nn.Embedding):  # as mBART's: the module scales its own output
        def forward(self, ids):
            return super().forward(ids) * 4.0

    torch.manual_seed(6)
    emb = ScaledEmbedding(7, 3)
    head = nn.Linear(3, 7, bias=False)
    head.weight = emb.weight  # tied
    model = nn.ModuleDict({"emb": emb, "head": head})
    gates = L0Gates(model, {"emb.weight": emb.weight})
    assert [type(m).__name__ for m in gates.modules["emb.weight"]] == ["ScaledEmbedding", "Linear"]
    with torch.no_grad():
        gates.extra["emb.weight"][2] = -10.0  # token 2's row closed
    gates.install()
    model.eval()
    ids = torch.tensor([1, 2])
    z = hard_concrete_deterministic(gates.extra["emb.weight"].detach())
    torch.testing.assert_close(emb(ids), (emb.weight * z)[ids] * 4.0)
    assert (emb(ids)[1] == 0).all()
    x = torch.randn(2, 3)
    torch.testing.assert_close(head(x), x @ (emb.weight * z).T)


def test_the_learned_phase_is_trained_once_for_every_level(tiny_model_path, data_root, tmp_path):
    from helpers import assert_exact_sparsity, csqa_request
    from smcbench.runner.grid import expand, run_local
    from smcbench.runner.single import execute
    from smcbench.runner.spec import GridSpec

    records = execute(csqa_request(tiny_model_path, data_root, tmp_path / "run", "variational_dropout", [0.2, 0.36]))
    assert [r["target_sparsity"] for r in records] == [0.2, 0.36]
    for r in records:
        assert_exact_sparsity(r, "variational_dropout")
    first, second = (r["notes"] for r in records)
    assert first["learned_levels"] == second["learned_levels"] == 2
    assert first["learned_s"] == second["learned_s"] and first["reached_sparsity"] == second["reached_sparsity"]

    spec = GridSpec(out=str(tmp_path / "grid"), data_dir=str(data_root), models=[tiny_model_path],
                    tasks=[{"task": "commonsense/csqa", "train_size": 16, "val_size": 8, "eval_size": 8,
                            "max_length": 32}],
                    methods=["l0"], sparsities=[0.2, 0.36], train={"lr": 1e-3, "batch_size": 4, "max_steps": 2})
    [node] = expand(spec)
    assert node.request.sparsities == [0.2, 0.36] and not node.done()
    assert run_local([node]) == {node.id: "ran"} and node.done()
    assert run_local([node]) == {node.id: "done"}


# --- the fused elementwise work (penalties, gates) against plain autograd ------------------------------------------

from smcbench.sparsity import learned as engine  # noqa: E402


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch):
    monkeypatch.setattr(engine, "_CHUNK", 1 << 16)  # several chunks in these tests' tensors, the last one partial


def _weights_and_log_sigma2(n=200_003):  # not a multiple of the chunk: the last chunk is partial
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(n, generator=gen) * 0.05
    w[:5] = torch.tensor([0.0, 1e-6, -1e-6, 3.0, -3.0])  # log α far past both clamps
    s = torch.randn(n, generator=gen) * 3 - 8
    s[:5] = torch.tensor([-8.0, -8.0, -8.0, -12.0, -12.0])
    return w, s


def test_the_fused_vd_penalty_and_its_gradients_equal_autograd_on_the_formula():
    w, s = _weights_and_log_sigma2()
    w1, s1 = w.clone().requires_grad_(), s.clone().requires_grad_()
    ref = vd_kl((s1 - torch.log(w1.square() + engine.EPS)).clamp(*engine.LOG_ALPHA_CLIP)).double().sum()
    ref.backward()
    w2, s2 = w.clone().requires_grad_(), s.clone().requires_grad_()
    got = engine._VDKLSum.apply(s2, w2)
    (got * 2).backward()  # the incoming gradient scales both
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(s2.grad, 2 * s1.grad, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(w2.grad, 2 * w1.grad, rtol=1e-5, atol=1e-6)
    assert (s2.grad[:5] == 0).all() and (s2.grad[5:] != 0).any()  # clamped: no gradient, as torch's clamp gives


def test_the_fused_penalties_gradients_do_not_depend_on_the_chunk_size(monkeypatch):
    w, s = _weights_and_log_sigma2()
    grads = []
    for chunk in (1 << 16, 1 << 20):
        monkeypatch.setattr(engine, "_CHUNK", chunk)
        w1, s1, a1 = w.clone().requires_grad_(), s.clone().requires_grad_(), (s + 8).requires_grad_()
        engine._VDKLSum.apply(s1, w1).backward()
        engine._OpenProbabilitySum.apply(a1).backward()
        grads.append((s1.grad, w1.grad, a1.grad))
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_the_fused_l0_penalty_and_gate_sample_equal_autograd_on_the_formula():
    _, la = _weights_and_log_sigma2()
    la = la + 8  # around 0: gates of every kind (closed, open, in between)
    a1, a2 = la.clone().requires_grad_(), la.clone().requires_grad_()
    gate_open_probability(a1).double().sum().backward()
    got = engine._OpenProbabilitySum.apply(a2)
    got.backward()
    assert got.item() == pytest.approx(gate_open_probability(la).double().sum().item(), rel=1e-6)
    torch.testing.assert_close(a2.grad, a1.grad, rtol=1e-6, atol=1e-9)

    u = torch.rand(la.shape, generator=torch.Generator().manual_seed(8))
    a1, a2 = la.clone().requires_grad_(), la.clone().requires_grad_()
    uc = u.clamp(engine.EPS, 1 - engine.EPS)
    s = torch.sigmoid((torch.log(uc) - torch.log1p(-uc) + a1) / engine.L0_BETA)
    ref = (s * (engine.L0_ZETA - L0_GAMMA) + L0_GAMMA).clamp(0.0, 1.0)
    got = hard_concrete_sample(a2, u)
    assert torch.equal(got, ref.detach())  # the same operations in the same order: bit for bit
    upstream = torch.randn(la.shape, generator=torch.Generator().manual_seed(9))
    ref.backward(upstream)
    got.backward(upstream)
    torch.testing.assert_close(a2.grad, a1.grad, rtol=1e-5, atol=1e-9)
    assert ((got == 0) | (got == 1)).any() and (a2.grad[(got == 0) | (got == 1)] == 0).all()


def test_vd_on_a_plain_embedding_looks_up_log_sigma2_rows_with_the_full_tables_values():
    torch.manual_seed(10)
    emb = nn.Embedding(50, 4, padding_idx=0)
    vd = VariationalDropout(emb, {"weight": emb.weight})
    with torch.no_grad():
        vd.extra["weight"].copy_(torch.randn(50, 4) - 3)
    vd.install()
    ids = torch.tensor([[0, 3, 3, 7]])
    torch.manual_seed(11)
    out = emb(ids)
    torch.manual_seed(11)
    noise = torch.randn(1, 4, 4)
    sigma = vd.extra["weight"].exp().sqrt()[ids]
    assert torch.equal(out.detach(), (emb.weight[ids] + sigma * noise).detach())
    out.sum().backward()
    grad = vd.extra["weight"].grad
    assert (grad[0] == 0).all() and (grad[3] != 0).all() and (grad[[1, 2, 4]] == 0).all()  # padding: none
    vd.remove()
    assert "forward" not in emb.__dict__ and torch.equal(emb(ids), emb.weight[ids])


def test_l0_on_a_plain_embedding_gates_each_looked_up_row_once_and_nothing_else():
    torch.manual_seed(12)
    emb = nn.Embedding(30, 6, padding_idx=2)
    gates = L0Gates(emb, {"weight": emb.weight}, initial_keep=0.5)
    gates.install()
    ids = torch.tensor([[5, 2, 5, 9], [9, 9, 1, 2]])
    out = emb(ids)
    z = out / emb.weight[ids]  # the gate each position got
    assert torch.equal(z[0, 0], z[0, 2]) and torch.equal(z[0, 3], z[1, 0]) and torch.equal(z[1, 0], z[1, 1])
    assert ((z >= 0) & (z <= 1))[ids != 2].all() and (out[ids == 2] == 0).all()  # the padding row is zeros
    out.sum().backward()
    used = torch.zeros(30, dtype=torch.bool)
    used[[5, 9, 1]] = True
    assert (gates.extra["weight"].grad[~used] == 0).all() and (emb.weight.grad[~used] == 0).all()
    # Over many calls the row gates follow the whole table's distribution: P(z > 0) as the penalty counts it.
    with torch.no_grad():
        opened = torch.stack([(emb(torch.tensor([5])) != 0).float() for _ in range(4000)]).mean()
    assert opened.item() == pytest.approx(gate_open_probability(gates.extra["weight"][5]).mean().item(), abs=0.03)
