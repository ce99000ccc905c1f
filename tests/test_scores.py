import pytest
import torch
from torch import nn

from smcbench.errors import SmcBenchError
from smcbench.sparsity import Sparsifier, accumulate_gradients, make_score
from smcbench.sparsity.scores import MovementScore, uniform_hash


def test_random_scores_do_not_depend_on_how_they_are_sliced():
    w = torch.zeros(50, 40)
    score = make_score("random", seed=7)
    whole = score.flat("w", w, slice(0, 2000))
    parts = torch.cat([score.flat("w", w, slice(a, a + 333)) for a in range(0, 2000, 333)])
    gathered = score.flat("w", w, torch.tensor([5, 1999, 0]))
    assert torch.equal(whole, parts[:2000])
    assert torch.equal(gathered, whole[[5, 1999, 0]])
    assert not torch.equal(whole, make_score("random", seed=8).flat("w", w, slice(0, 2000)))
    assert not torch.equal(whole, score.flat("other", w, slice(0, 2000)))


def test_uniform_hash_is_roughly_uniform():
    u = uniform_hash(torch.arange(200_000), salt=12345)
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    hist = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert torch.all((hist - 0.1).abs() < 0.005)


def test_random_after_uses_random_scores_not_magnitude():
    # Official "Random (After)" ran magnitude pruning: the masks would equal OMP's.
    torch.manual_seed(0)
    magnitude, random = nn.Linear(64, 64), nn.Linear(64, 64)
    random.load_state_dict(magnitude.state_dict())
    a, b = Sparsifier(magnitude), Sparsifier(random)
    a.prune(0.5, "magnitude")
    b.prune(0.5, make_score("random", seed=0), "uniform")
    overlap = (a.masks["weight"] == b.masks["weight"]).float().mean()
    assert 0.4 < float(overlap) < 0.6  # independent of magnitude: about half agree


def test_snip_sums_gradients_over_every_batch():
    # Official SNIP under gradient accumulation kept only the last sub-batch's scores.
    torch.manual_seed(0)
    model = nn.Linear(5, 1, bias=False)
    params = {"weight": model.weight}
    batches = [torch.randn(4, 5) for _ in range(3)]
    grads = accumulate_gradients(params, lambda x: model(x).pow(2).sum(), batches, num_batches=3)
    model.zero_grad()
    model(torch.cat(batches)).pow(2).sum().backward()
    assert torch.allclose(grads["weight"], model.weight.grad, atol=1e-5)
    only_last = torch.autograd.grad(model(batches[-1]).pow(2).sum(), model.weight)[0]
    assert not torch.allclose(grads["weight"], only_last)
    snip = make_score("snip", grads=grads).flat("weight", model.weight, slice(0, 5))
    assert torch.allclose(snip, (model.weight.grad * model.weight).abs().reshape(-1), atol=1e-5)


def test_accumulate_gradients_leaves_grads_as_found_and_rejects_empty_data():
    model = nn.Linear(3, 1)
    model.weight.grad = torch.ones_like(model.weight)
    accumulate_gradients({"weight": model.weight}, lambda x: model(x).sum(), [torch.randn(2, 3)], 1)
    assert torch.equal(model.weight.grad, torch.ones_like(model.weight))
    with pytest.raises(SmcBenchError, match="empty"):
        accumulate_gradients({"weight": model.weight}, lambda x: model(x).sum(), [], 1)


def test_movement_scores_weights_moving_away_from_zero():
    p = nn.Parameter(torch.tensor([1.0, 1.0, -1.0]))
    p.grad = torch.tensor([-1.0, 1.0, 1.0])  # SGD moves: away, towards, away from zero
    score = MovementScore()
    score.update({"p": p})
    assert score.flat("p", p, slice(0, 3)).tolist() == [1.0, -1.0, 1.0]


def test_unknown_score_and_missing_arguments_are_clear_errors():
    with pytest.raises(SmcBenchError, match="unknown score 'magnitud'"):
        make_score("magnitud")
    with pytest.raises(SmcBenchError, match="score 'snip'"):
        make_score("snip")
