"""scratch_e and scratch_b: another run's mask trained again from a fresh seeded initialisation (or θ0)."""

import pytest
import torch
import yaml

from helpers import csqa_request
from smcbench.errors import SmcBenchError
from smcbench.methods import get_method, method_settings
from smcbench.methods.scratch import fresh_initialisation, linear_flops_ratio
from smcbench.runner.grid import expand
from smcbench.runner.single import LocalExperiment, execute
from smcbench.runner.spec import load_spec
from smcbench.sparsity import read_masks
from smcbench.tasks import get_task


class Starts(LocalExperiment):
    def __init__(self, *args):
        super().__init__(*args)
        self.starts = []

    def fine_tune(self, model, callbacks, tag, steps=None):
        self.starts.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return super().fine_tune(model, callbacks, tag, steps)


def started_from(tiny_model_path, data_root, out, method, **settings):
    req = csqa_request(tiny_model_path, data_root, out, method, [0.488], **settings)
    exp = Starts(req, get_task(req.spec))
    [outcome] = get_method(method).run(exp, [0.488])
    return exp, outcome


def test_scratch_trains_the_source_runs_mask_exactly_from_a_fresh_seeded_initialisation(tiny_model_path, data_root,
                                                                                        tmp_path):
    exp, outcome = started_from(tiny_model_path, data_root, tmp_path, "scratch_e")
    [source] = execute(csqa_request(tiny_model_path, data_root, tmp_path, "omp_after", [0.488]))  # ran as the source
    source_masks = read_masks(f"{source['dir']}/masks.safetensors")
    assert all(torch.equal(outcome.sparsifier.masks[n], m) for n, m in source_masks.items())
    theta0 = dict(exp.initial_model().named_parameters())
    start = exp.starts[-1]
    name = "bert.encoder.layer.0.attention.self.query.weight"
    kept = source_masks[name]
    assert not torch.allclose(start[name][kept], theta0[name].detach()[kept])  # not the pretrained values
    assert (start[name][~kept] == 0).all()
    assert start[name][kept].std().item() == pytest.approx(0.02, rel=0.2)  # BERT's initializer_range
    again, _ = started_from(tiny_model_path, data_root, tmp_path, "scratch_e")
    assert torch.equal(again.starts[-1][name], start[name])  # seeded
    other, _ = started_from(tiny_model_path, data_root, tmp_path, "scratch_e", init_seed=3)
    assert not torch.equal(other.starts[-1][name], start[name])
    rewound, _ = started_from(tiny_model_path, data_root, tmp_path, "scratch_e", init="pretrained")
    assert torch.equal(rewound.starts[-1][name], theta0[name].detach() * kept)


def test_scratch_b_trains_for_the_dense_runs_flops(tiny_model_path, data_root, tmp_path):
    [e] = execute(csqa_request(tiny_model_path, data_root, tmp_path, "scratch_e", [0.488]))
    [b] = execute(csqa_request(tiny_model_path, data_root, tmp_path, "scratch_b", [0.488]))
    assert e["steps"] == 6 and b["notes"]["flops_ratio"] > 1.0
    assert b["steps"] == -(-6 * b["notes"]["flops_ratio"] // 1)
    assert e["achieved_sparsity"] == b["achieved_sparsity"]


def test_linear_flops_ratio_counts_kept_linear_weights_only():
    model = torch.nn.Sequential(torch.nn.Embedding(100, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    masks = {"1.weight": torch.tensor([True] * 4 + [False] * 12).view(4, 4), "0.weight": torch.zeros(100, 4).bool()}
    assert linear_flops_ratio(model, masks) == pytest.approx(32 / 20)


def test_fresh_initialisation_without_an_initializer_range_resets_every_module():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(7.0)
    fresh_initialisation(model, 1)
    assert not (model[0].weight == 7).any() and (model[1].weight == 1).all()


def test_scratch_source_must_be_a_sparse_method_and_the_grid_runs_it_first(tiny_model_path, data_root, tmp_path):
    with pytest.raises(SmcBenchError, match="source: 'dense' is not a sparse method"):
        method_settings("scratch_e", {"source": "dense"}, "settings")
    with pytest.raises(SmcBenchError, match="source: 'scratch_b' is not"):
        method_settings("scratch_e", {"source": "scratch_b"}, "settings")
    spec = {"name": "s", "out": str(tmp_path / "out"), "data_dir": str(data_root),
            "tasks": [{"task": "commonsense/csqa", "train_size": 16, "val_size": 8, "eval_size": 8,
                       "max_length": 32}],
            "models": [tiny_model_path], "methods": ["scratch_e"], "sparsities": [0.2], "seeds": [0],
            "train": {"lr": 1e-3, "batch_size": 4, "max_steps": 3}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    nodes = {n.label.split(": ", 1)[1]: n for n in expand(load_spec(str(tmp_path / "s.yaml")))}
    assert set(nodes) == {"dense", "omp_after @ 0.200 (mask source)", "scratch_e @ 0.200"}
    assert nodes["scratch_e @ 0.200"].deps == (nodes["omp_after @ 0.200 (mask source)"].id,)
    assert nodes["omp_after @ 0.200 (mask source)"].deps == (nodes["dense"].id,)


def test_the_state_of_sparsity_preset_sweeps_penalties_as_variants_and_runs_sources_first():
    nodes = expand(load_spec("state-of-sparsity"))
    seed0 = [n for n in nodes if n.request.spec.seed == 0]
    # One node per penalty weight: its learned phase is trained once and ranked to each of the 10 levels.
    for method, prefix in (("variational_dropout", "variational_dropout (vd_kl_weight="), ("l0", "l0 (l0_lambda=")):
        learned = [n for n in seed0 if n.request.method == method]
        assert len(learned) == 3 and all(n.label.split(": ", 1)[1].startswith(prefix) for n in learned)
        assert all(len(n.request.sparsities) == 10 and len(n.result_paths()) == 10 for n in learned)
    scratch = next(n for n in seed0 if n.request.method == "scratch_b")
    [source] = [n for n in seed0 if n.id in scratch.deps]
    assert source.request.method == "omp_after" and source.request.sparsities == scratch.request.sparsities
