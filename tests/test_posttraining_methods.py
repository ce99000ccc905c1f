"""oBERT, SparseGPT and Wanda as methods, the no-retraining setting, N:M, and the Appendix C recipe (lrr, kd)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import csqa_request
from smcbench.errors import SmcBenchError
from smcbench.methods import get_method, method_settings
from smcbench.methods.recipe import Distillation, LRRewinding, distillation_loss
from smcbench.runner.grid import expand
from smcbench.runner.single import LocalExperiment, dense_dir, execute
from smcbench.runner.spec import load_spec
from smcbench.runner.store import ResultStore
from smcbench.sparsity import read_masks
from smcbench.tasks import get_task
from smcbench.training import LoopState


def weights_and_masks(record):
    return load_file(f"{record['dir']}/model.safetensors"), read_masks(f"{record['dir']}/masks.safetensors")


@pytest.mark.parametrize("method", ["omp_after", "wanda", "sparsegpt"])
def test_post_training_without_retraining_prunes_the_dense_fine_tune_and_trains_nothing(method, tiny_model_path,
                                                                                        data_root, tmp_path):
    settings = {"retrain": False} if method == "omp_after" else {}
    [r] = execute(csqa_request(tiny_model_path, data_root, tmp_path, method, [0.5], **settings))
    assert r["steps"] == 0 and r["notes"]["retrained"] is False and r["validation_best"] is not None
    dense = load_file(str(dense_dir(csqa_request(tiny_model_path, data_root, tmp_path, "dense", [])) /
                          "model.safetensors"))
    weights, masks = weights_and_masks(r)
    name = "bert.encoder.layer.0.intermediate.dense.weight"
    kept = masks[name]
    assert (weights[name][~kept] == 0).all()
    if method == "sparsegpt":  # the OBS update moved the kept weights
        assert not torch.allclose(weights[name][kept], dense[name][kept])
    else:  # the others only mask
        assert torch.equal(weights[name][kept], dense[name][kept])
    assert torch.equal(weights["classifier.bias"], dense["classifier.bias"])  # nothing else trained
    if method != "omp_after":  # the reference's selection by default: the encoder's Linear layers, no fallback
        assert r["selection"]["preset"] == "encoder" and r["config"]["method_version"] == 2
        assert all(".layer." in layer["name"] for layer in r["layers"])
        assert all(layer["pruned"] == round(0.5 * layer["numel"]) for layer in r["layers"])
        assert r["notes"]["magnitude_pruned"] == [] and r["notes"]["magnitude_pruned_fraction"] == 0.0


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_post_training_under_all_prunes_embeddings_by_magnitude_and_says_how_much(method, tiny_model_path,
                                                                                  data_root, tmp_path):
    [r] = execute(csqa_request(tiny_model_path, data_root, tmp_path, method, [0.5], preset="all"))
    layers = {layer["name"]: layer for layer in r["layers"]}
    assert all(layer["pruned"] == round(0.5 * layer["numel"]) for layer in r["layers"])  # each at the level
    fallback = r["notes"]["magnitude_pruned"]
    assert "bert.embeddings.word_embeddings.weight" in fallback and not any(".layer." in n for n in fallback)
    share = sum(layers[n]["numel"] for n in fallback) / sum(x["numel"] for x in r["layers"])
    assert r["notes"]["magnitude_pruned_fraction"] == pytest.approx(share, rel=1e-12)


@pytest.mark.parametrize("method", ["omp_after", "wanda", "sparsegpt"])
def test_n_m_pattern_keeps_n_of_every_m_and_fixes_the_level(method, tiny_model_path, data_root, tmp_path):
    [r] = execute(csqa_request(tiny_model_path, data_root, tmp_path, method, [0.5], pattern="2:4", retrain=False))
    assert r["achieved_sparsity"] == 0.5
    _, masks = weights_and_masks(r)
    assert all(m.reshape(-1, 4).sum(1).eq(2).all() for m in masks.values())
    with pytest.raises(SmcBenchError, match="pattern 2:4 prunes exactly 0.5 of the weights: give --sparsity 0.5"):
        execute(csqa_request(tiny_model_path, data_root, tmp_path / "other", method, [0.3], pattern="2:4"))
    assert not (tmp_path / "other").exists() or not list((tmp_path / "other").rglob("result.json"))
    with pytest.raises(SmcBenchError, match="pattern: give N:M"):
        method_settings(method, {"pattern": "4:2"}, "settings")


def test_retraining_post_training_methods_is_an_option(tiny_model_path, data_root, tmp_path):
    [r] = execute(csqa_request(tiny_model_path, data_root, tmp_path, "wanda", [0.36], retrain=True))
    assert r["steps"] == 6 and "retrained" not in r["notes"]
    assert r["config"]["settings"] == {"retrain": True}


def test_obert_gradual_and_one_shot(tiny_model_path, data_root, tmp_path):
    tiny = {"obert_gradients": 4, "obert_block": 8, "interval": 1}
    [gradual] = execute(csqa_request(tiny_model_path, data_root, tmp_path, "obert", [0.488], **tiny))
    assert gradual["notes"]["pruning_steps"] == [1, 2, 3, 4, 5]  # GMP's window: 10 % to 80 % of 6 updates
    assert gradual["notes"]["fisher_gradients_s"] > 0 and gradual["notes"]["fisher_work_s"] > 0
    # B = 8 floats a weight for the inverses, k = min(16, 8 // 3) = 2 for the gradients awaiting a rank-k update
    numel = sum(layer["numel"] for layer in gradual["layers"])
    assert gradual["notes"]["fisher_memory_bytes"] == (8 + 2) * 4 * numel
    [one] = execute(csqa_request(tiny_model_path, data_root, tmp_path, "obert", [0.488], one_shot=True, **tiny))
    for r in (gradual, one):
        total = sum(layer["numel"] for layer in r["layers"])
        assert sum(layer["pruned"] for layer in r["layers"]) == round(0.488 * total)
        weights, masks = weights_and_masks(r)
        assert all((weights[n][~m] == 0).all() for n, m in masks.items())
    assert "pruning_steps" not in one["notes"]


def test_obert_one_shot_moves_kept_weights_by_the_obs_update(tiny_model_path, data_root, tmp_path):
    from smcbench.methods.obert import OBertStep

    # (The tiny random model's gradients are ~1e-8: a dampening far below g² lets the Fisher speak.)
    req = csqa_request(tiny_model_path, data_root, tmp_path, "obert", [0.5], obert_gradients=6, obert_block=4,
                  obert_damp=1e-18)
    exp = LocalExperiment(req, get_task(req.spec))
    model = exp.dense_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sp = exp.settings.sparsifier(model)
    OBertStep(exp)(sp, 0.5)
    name = "bert.encoder.layer.1.output.dense.weight"
    kept = sp.masks[name]
    assert (sp.params[name][~kept] == 0).all()
    assert not torch.allclose(sp.params[name][kept], before[name][kept])
    assert all(p.grad is None for p in model.parameters())  # collecting gradients leaves none behind


def test_lr_rewinding_replays_the_schedule_between_pruning_steps():
    def linear(step):
        return 1.0 - step / 100

    cb = LRRewinding([20, 60])
    state = LoopState(None, None, 0, 100, schedule=linear)
    factors = {}
    for step in (0, 10, 19, 20, 40, 59, 60, 80, 99):
        state.step = step
        factors[step] = cb.lr_factor(state, linear(step))
    assert factors[0] == 1.0 and factors[10] == pytest.approx(0.5) and factors[19] == pytest.approx(0.05)
    assert factors[20] == 1.0 and factors[40] == pytest.approx(0.5) and factors[60] == 1.0
    assert factors[80] == pytest.approx(0.5) and factors[99] == pytest.approx(1 - 97.5 / 100, abs=0.01)
    assert LRRewinding([]).lr_factor(state, 0.3) == 0.3  # no pruning during training: the schedule as it is


def test_distillation_loss_is_zero_for_the_teacher_and_mixes_by_hardness():
    torch.manual_seed(0)
    logits = torch.randn(4, 5)
    assert distillation_loss(logits, logits, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(4, 5)
    p, q = torch.softmax(other / 2, -1), torch.softmax(logits / 2, -1)
    expected = (p * (p.log() - q.log())).sum(-1).mean() * 4
    assert distillation_loss(logits, other, 2.0).item() == pytest.approx(expected.item(), rel=1e-5)
    tokens = torch.randn(2, 3, 7)
    labels = torch.tensor([[1, -100, 2], [3, 4, -100]])
    masked = distillation_loss(tokens, tokens.flip(0), 1.0, labels)
    p, q = torch.softmax(tokens.flip(0), -1), torch.softmax(tokens, -1)
    kl = (p * (p.log() - q.log())).sum(-1)
    assert masked.item() == pytest.approx(kl[labels != -100].mean().item(), rel=1e-5)

    class Out:
        def __init__(self, logits):
            self.logits = logits

    teacher = torch.nn.Linear(5, 5)
    cb = Distillation(teacher, lambda model, batch: Out(model(batch["x"])), 2.0, 0.0)
    loss = torch.tensor(1.5)
    assert cb.loss(None, {"x": logits}, Out(logits), loss) is not None
    assert cb.loss(None, {"x": logits}, Out(logits), loss).item() == 1.5  # hardness 0: the task loss alone


def test_recipe_kd_uses_the_cached_dense_teacher_and_lrr_follows_the_pruning_steps(tiny_model_path, data_root,
                                                                                  tmp_path, monkeypatch):
    from smcbench.methods import recipe as recipe_module

    rewinds, factors = [], []
    original_factor = recipe_module.LRRewinding.lr_factor

    def spy(self, state, factor):
        rewinds.append(tuple(self.pruning_steps))
        factors.append((state.step, original_factor(self, state, factor), state.schedule(0)))
        return factors[-1][1]

    monkeypatch.setattr(recipe_module.LRRewinding, "lr_factor", spy)
    [plain] = execute(csqa_request(tiny_model_path, data_root, tmp_path, "gmp", [0.36], interval=1))
    assert not rewinds  # no lrr: no rewinding callback
    [recipe] = execute(csqa_request(tiny_model_path, data_root, tmp_path, "gmp", [0.36], interval=1, kd=True, lrr=True,
                               preset="encoder"))
    assert rewinds and set(rewinds) == {tuple(recipe["notes"]["pruning_steps"])}  # GMP's own pruning steps
    # The rate starts its schedule afresh right after every pruning step.
    assert all(f == first for step, f, first in factors if step in recipe["notes"]["pruning_steps"])
    assert [r["method"] for r in ResultStore(tmp_path / "results.db").records()].count("dense") == 1
    assert recipe["config"]["settings"] == {"interval": 1, "kd": True, "lrr": True, "preset": "encoder"}
    assert plain["config"]["settings"] == {"interval": 1}  # recipe fields at their defaults: old ids stand
    assert not any("embeddings" in layer["name"] or "classifier" in layer["name"] for layer in recipe["layers"])
    assert plain["metrics"] != recipe["metrics"] or plain["validation_best"] != recipe["validation_best"]


def test_the_appendix_c_preset_and_kd_make_the_dense_run_a_dependency(tiny_model_path, data_root, tmp_path):
    nodes = expand(load_spec("paper-appendix-c"))
    methods = {n.request.method for n in nodes}
    assert methods == {"dense", "obert", "gmp", "omp_after", "lth"}
    gmp = next(n for n in nodes if n.request.method == "gmp")
    assert gmp.request.settings.kd and gmp.request.settings.lrr and gmp.request.settings.preset == "encoder"
    dense = next(n for n in nodes if n.request.method == "dense" and n.request.spec.seed == gmp.request.spec.seed)
    assert gmp.deps == (dense.id,)  # the teacher is trained first


def test_layerwise_methods_reach_exactly_their_level_through_get_method():
    wanda = get_method("wanda")
    settings = method_settings("wanda", {"pattern": "1:4"}, "settings")
    assert wanda.levels([0.75], settings) == [0.75]
    assert wanda.levels([0.2, 0.5], method_settings("wanda", {}, "settings")) == [0.2, 0.5]


def test_true_by_default_settings_can_be_switched_off_on_the_command_line(tiny_model_path, data_root, tmp_path):
    from typer.testing import CliRunner

    from smcbench.cli import app

    result = CliRunner().invoke(app, [
        "run", "commonsense/csqa", "--method", "omp_after", "--no-retrain", "--sparsity", "0.5", "--model",
        tiny_model_path, "--data-dir", str(data_root), "--train-size", "24", "--val-size", "8", "--eval-size", "8",
        "--max-length", "32", "--batch-size", "4", "--max-steps", "2", "--no-bucket-by-length", "--quiet", "--out",
        str(tmp_path)])
    assert result.exit_code == 0, result.output
    [r] = [json.loads(p.read_text()) for p in (tmp_path / "omp_after").rglob("result.json")]
    assert r["steps"] == 0 and r["config"]["settings"] == {"retrain": False}
    assert r["config"]["train"]["bucket_by_length"] is False
