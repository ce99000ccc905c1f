import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from smcbench.errors import SmcBenchError
from smcbench.sparsity import Sparsifier, make_score, target_count


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def train(model, sparsifier, optimizer, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randint(0, 50, (8,), generator=gen)
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        if sparsifier is not None:
            sparsifier.mask_gradients()
        optimizer.step()
        if sparsifier is not None:
            sparsifier.after_step()


def pruned_values(sp):
    return torch.cat([p.detach()[~sp.masks[n]] for n, p in sp.params.items()])


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, fused=True),
        lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True),
        lambda ps: torch.optim.SGD(ps, lr=1e-1, momentum=0.9, nesterov=True, weight_decay=0.01),
    ],
)
def test_masks_survive_training_with_weight_decay_and_momentum(make_opt):
    model = mlp()
    opt = make_opt(model.parameters())
    sp = Sparsifier(model)
    sp.attach_optimizer(opt)
    train(model, sp, opt, 5)  # optimizer state exists before pruning
    sp.prune(0.6)
    train(model, sp, opt, 20)
    assert torch.count_nonzero(pruned_values(sp)) == 0
    for n, p in sp.params.items():
        for value in opt.state[p].values():
            if isinstance(value, torch.Tensor) and value.shape == p.shape:
                assert torch.count_nonzero(value[~sp.masks[n]]) == 0
    total = sum(m.numel() for m in sp.masks.values())
    assert sum(int((~m).sum()) for m in sp.masks.values()) == target_count(0.6, total)


def test_momentum_revives_weights_when_only_weights_and_grads_are_masked():
    # The official masks zeroed weights once and never touched Adam's moments: pruned weights came back.
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train(model, None, opt, 5)
    sp = Sparsifier(model)
    sp.prune(0.6)  # optimizer NOT attached: moments keep their values, as in the official code
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):  # gradients masked, weights never re-masked: the official loop
        opt.zero_grad()
        model(torch.randint(0, 50, (8,), generator=gen)).pow(2).mean().backward()
        sp.mask_gradients()
        opt.step()
    assert torch.count_nonzero(pruned_values(sp)) > 0

    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train(model, None, opt, 5)
    sp = Sparsifier(model)
    sp.attach_optimizer(opt)
    sp.prune(0.6)
    train(model, sp, opt, 3)
    assert torch.count_nonzero(pruned_values(sp)) == 0


def test_without_an_attached_optimizer_after_step_remasks():
    """Regression: with no optimizer attached, `after_step()` re-masked nothing (`all([])` is true), so a library
    user who forgot `attach_optimizer` had pruned weights revived by Adam's moments. Nothing is known of an
    unattached optimizer's state: the weights are re-masked."""
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train(model, None, opt, 5)  # moments exist before pruning
    sp = Sparsifier(model)
    sp.prune(0.6)
    train(model, sp, opt, 3)  # mask_gradients + step + after_step, the documented loop, optimizer not attached
    assert torch.count_nonzero(pruned_values(sp)) == 0


class NoisyOptimizer(torch.optim.SGD):
    """An optimizer that moves every weight, even with zero gradient."""

    def step(self, closure=None):
        super().step(closure)
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    p.add_(0.01)


def test_unknown_optimizers_get_their_weights_remasked_after_each_step():
    model = mlp()
    opt = NoisyOptimizer(model.parameters(), lr=0.1)
    sp = Sparsifier(model)
    sp.attach_optimizer(opt)
    sp.prune(0.5)
    train(model, sp, opt, 3)
    assert torch.count_nonzero(pruned_values(sp)) == 0


def test_rigl_conserves_each_layers_nonzeros_and_regrows_from_zero_with_fresh_state():
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp = Sparsifier(model)
    sp.attach_optimizer(opt)
    sp.prune(0.7, make_score("random", seed=0), "uniform")
    train(model, sp, opt, 5)
    before = {n: m.clone() for n, m in sp.masks.items()}
    weights = {n: p.detach().clone() for n, p in sp.params.items()}
    model(torch.arange(8)).pow(2).mean().backward()  # dense gradients, not yet masked
    sp.rigl_step(0.3)
    moved = 0
    for n, p in sp.params.items():
        old, new = before[n], sp.masks[n]
        assert int(new.sum()) == int(old.sum())
        grown = new & ~old
        kept = new & old
        moved += int(grown.sum())
        assert torch.count_nonzero(p.detach()[grown]) == 0
        assert torch.count_nonzero(p.detach()[~new]) == 0
        assert torch.equal(p.detach()[kept], weights[n][kept])
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.count_nonzero(opt.state[p][key][grown]) == 0
        assert moved <= sum(target_count(0.3, int(m.sum())) for m in before.values())
    assert moved > 0
    # Uniform at 0.7 and RigL conserving each layer's count: every layer holds exactly its pruned count still.
    assert all(r.pruned == target_count(0.7, r.numel) for r in sp.layers())


def test_rigl_grows_where_the_gradient_is_largest():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, 0.1, 0.0, 0.0]]))
    sp = Sparsifier(layer)
    sp.set_masks({"weight": torch.tensor([[True, True, False, False]])})
    layer.weight.grad = torch.tensor([[0.0, 0.0, 0.2, 3.0]])
    sp.rigl_step(0.5)  # moves round(0.5 · 2) = 1: drop 0.1, grow the |g| = 3 position
    assert sp.masks["weight"].tolist() == [[True, False, False, True]]
    assert layer.weight.tolist() == [[0.5, 0.0, 0.0, 0.0]]


def test_masks_round_trip_through_safetensors(tmp_path):
    model = mlp()
    sp = Sparsifier(model)
    sp.prune(0.45, "random", "uniform")
    sp.save_masks(tmp_path / "masks.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["masks.safetensors"]  # no temp file left behind
    other = Sparsifier(mlp(seed=3))
    other.load_masks(tmp_path / "masks.safetensors")
    assert all(torch.equal(sp.masks[n], other.masks[n]) for n in sp.masks)
    assert torch.count_nonzero(pruned_values(other)) == 0


def test_masks_are_bit_packed_and_old_bool_files_still_load(tmp_path):
    import json

    from safetensors import safe_open

    from smcbench.sparsity.sparsifier import MASK_FORMAT_BOOL, pack_bits, read_masks, unpack_bits

    model = mlp()
    sp = Sparsifier(model)
    sp.prune(0.45, "random", "uniform")
    sp.save_masks(tmp_path / "packed.safetensors")
    with safe_open(str(tmp_path / "packed.safetensors"), framework="pt") as f:
        for name, mask in sp.masks.items():
            assert f.get_tensor(name).dtype == torch.uint8 and f.get_tensor(name).numel() == -(-mask.numel() // 8)
    old = {n: m.clone() for n, m in sp.masks.items()}
    save_file(old, tmp_path / "old.safetensors", metadata={"format": MASK_FORMAT_BOOL, "selection": json.dumps({})})
    for file in ("packed.safetensors", "old.safetensors"):
        loaded = read_masks(tmp_path / file)
        assert all(torch.equal(loaded[n], m) for n, m in old.items()), file
    odd = torch.tensor([[True, False, True], [False, False, True], [True, True, True]])  # 9 bits: one byte padded
    assert torch.equal(unpack_bits(pack_bits(odd), [3, 3], "x"), odd)
    damaged = pack_bits(odd)
    damaged[-1] = 0b10  # a padding bit set
    with pytest.raises(SmcBenchError, match="padding bits after the mask are not zero"):
        unpack_bits(damaged, [3, 3], "x")
    with pytest.raises(SmcBenchError, match="cannot hold a \\(3, 3\\) mask"):
        unpack_bits(pack_bits(odd)[:1], [3, 3], "x")


def test_wrong_mask_files_are_clear_errors(tmp_path):
    sp = Sparsifier(mlp())
    with pytest.raises(SmcBenchError, match="does not exist"):
        sp.load_masks(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SmcBenchError, match="not a readable safetensors"):
        sp.load_masks(tmp_path / "junk.safetensors")
    save_file({"0.weight": torch.ones(50, 16, dtype=torch.bool)}, tmp_path / "plain.safetensors")
    with pytest.raises(SmcBenchError, match="not an smc-bench mask file"):
        sp.load_masks(tmp_path / "plain.safetensors")

    small = Sparsifier(nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 8)))
    small.save_masks(tmp_path / "other.safetensors")
    with pytest.raises(SmcBenchError, match="do not fit the model"):
        sp.load_masks(tmp_path / "other.safetensors")
    shaped = Sparsifier(nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5)))
    shaped.save_masks(tmp_path / "shape.safetensors")
    with pytest.raises(SmcBenchError, match="has shape"):
        sp.load_masks(tmp_path / "shape.safetensors")
    assert all(bool(m.all()) for m in sp.masks.values())  # nothing half-loaded


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, math.nan, math.inf, "0.5", None])
def test_sparsity_outside_zero_one_is_an_error(bad):
    with pytest.raises(SmcBenchError, match=r"sparsity must be a number in \[0, 1\)"):
        Sparsifier(mlp()).prune(bad)


def test_unknown_allocation_is_an_error():
    with pytest.raises(SmcBenchError, match="unknown allocation 'globl'"):
        Sparsifier(mlp()).prune(0.5, allocation="globl")


def test_uniform_erk_and_n_m_allocations_through_the_sparsifier():
    sp = Sparsifier(mlp())
    sp.prune(0.5, allocation="uniform")
    assert all(r.pruned == target_count(0.5, r.numel) for r in sp.layers())
    sp = Sparsifier(mlp())
    sp.prune(0.8, allocation="erk")
    rows = {r.name: r for r in sp.layers()}
    assert rows["3.weight"].sparsity < rows["1.weight"].sparsity  # fewer params, denser under ERK
    # ERK sets each layer's density; each layer then prunes exactly its own count (rounding per layer).
    from smcbench.sparsity.allocation import erk_densities

    densities = erk_densities({n: tuple(p.shape) for n, p in sp.params.items()}, 0.2)
    assert all(r.pruned == target_count(1.0 - densities[r.name], r.numel) for r in sp.layers())
    sp = Sparsifier(mlp())
    sp.prune(0.5, allocation="2:4")
    assert all(int(m.view(-1, 4).sum(1).max()) == 2 for m in sp.masks.values())
    with pytest.raises(SmcBenchError, match="allocation 2:4 prunes exactly 0.5 of the weights: give sparsity 0.5"):
        Sparsifier(mlp()).prune(0.0, allocation="2:4")  # regression: the level used to be ignored silently


def test_pruned_hugging_face_model_saves_and_reloads(tiny_bert, tmp_path):
    from transformers import BertForMultipleChoice

    sp = Sparsifier(tiny_bert)
    sp.prune(0.5)
    keys = set(tiny_bert.state_dict())
    tiny_bert.save_pretrained(tmp_path / "model")
    reloaded = BertForMultipleChoice.from_pretrained(tmp_path / "model")
    assert set(reloaded.state_dict()) == keys
    again = dict(reloaded.named_parameters())
    for n, p in sp.params.items():
        assert torch.equal(again[n], p.detach())
        assert torch.count_nonzero(again[n][~sp.masks[n]]) == 0


def test_state_dict_round_trip():
    sp = Sparsifier(mlp())
    sp.prune(0.3)
    state = sp.state_dict()
    other = Sparsifier(mlp(seed=5))
    other.load_state_dict(state)
    assert other.masks.keys() == sp.masks.keys()
    assert all(torch.equal(other.masks[n], sp.masks[n]) for n in sp.masks)
    assert other.selection == state["selection"] == sp.selection
    assert all(torch.count_nonzero(p.detach()[~other.masks[n]]) == 0 for n, p in other.params.items())


def test_squash_leaves_the_model_sparse_and_detached():
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sp = Sparsifier(model)
    sp.attach_optimizer(opt)
    sp.prune(0.4)
    assert sp.squash() is model
    assert sp.optimizers == []
    assert torch.count_nonzero(pruned_values(sp)) == 0
    assert set(model.state_dict()) == {"0.weight", "1.weight", "1.bias", "3.weight", "3.bias"}
