"""Every method end to end on a tiny random-init BERT and tiny CSQA files, with the paper's semantics."""

import sys

import pytest
import torch

from helpers import TINY_SETTINGS, assert_exact_sparsity, csqa_request
from smcbench.methods import METHODS
from smcbench.runner.single import LocalExperiment, execute
from smcbench.runner.store import ResultStore
from smcbench.sparsity import read_masks
from smcbench.tasks import TaskSpec
from smcbench.training import TrainConfig

SPARSE_METHODS = [m for m, method in METHODS.items() if method.sparse]


request = csqa_request


@pytest.mark.parametrize("method", SPARSE_METHODS)
def test_every_method_runs_and_reaches_its_target_exactly(method, tiny_model_path, data_root, tmp_path):
    records = execute(request(tiny_model_path, data_root, tmp_path, method, [0.2, 0.36],
                              **TINY_SETTINGS.get(method, {})))
    assert [r["target_sparsity"] for r in records] == [0.2, 0.36]
    for r in records:
        assert_exact_sparsity(r, method)
        assert r["metric"]["chance"] == 0.2 and r["metrics"]["eval_examples"] == 8
        correct = r["metrics"]["accuracy"] * 8  # a count of the 8 evaluation questions
        assert correct == round(correct)
        masks = read_masks(f"{r['dir']}/masks.safetensors")
        from safetensors.torch import load_file

        weights = load_file(f"{r['dir']}/model.safetensors")
        assert all(torch.count_nonzero(weights[n][~m]) == 0 for n, m in masks.items())
    assert not list((tmp_path / ".checkpoints").glob("*"))  # finished runs leave no checkpoint behind


def test_snip_rigl_is_actually_sparse_and_moves_connections(tiny_model_path, data_root, tmp_path):
    # The official README's SNIP + RigL command ('SNIP' vs 'snip') silently trained dense.
    [r] = execute(request(tiny_model_path, data_root, tmp_path, "snip_rigl", [0.488], interval=1))
    assert_exact_sparsity(r, "snip_rigl")
    assert r["notes"]["rigl_updates"] >= 2


def test_after_methods_share_one_dense_fine_tune(tiny_model_path, data_root, tmp_path):
    for method in ("omp_after", "random_after", "lth"):
        execute(request(tiny_model_path, data_root, tmp_path, method, [0.2, 0.36]))
    lines = ResultStore(tmp_path / "results.db").records()
    assert [x["method"] for x in lines].count("dense") == 1
    assert len(list((tmp_path / "dense").glob("*/*/result.json"))) == 1
    again = execute(request(tiny_model_path, data_root, tmp_path, "omp_after", [0.2, 0.36]))
    assert len(ResultStore(tmp_path / "results.db").records()) == len(lines)  # nothing re-run
    assert [r["target_sparsity"] for r in again] == [0.2, 0.36]


class Spy(LocalExperiment):
    """Records the weights each fine-tune starts from."""

    def __init__(self, *args):
        super().__init__(*args)
        self.starts = []

    def fine_tune(self, model, callbacks, tag, steps=None):
        self.starts.append((tag, {n: p.detach().clone() for n, p in model.named_parameters()}))
        return super().fine_tune(model, callbacks, tag, steps)


def run_spy(tiny_model_path, data_root, tmp_path, method, sparsities):
    from smcbench.methods import get_method
    from smcbench.tasks import get_task

    req = request(tiny_model_path, data_root, tmp_path, method, sparsities)
    exp = Spy(req, get_task(req.spec))
    outcomes = list(get_method(method).run(exp, sparsities))
    return exp, outcomes


def test_lth_rewinds_to_theta_zero_every_round(tiny_model_path, data_root, tmp_path):
    exp, outcomes = run_spy(tiny_model_path, data_root, tmp_path, "lth", [0.36])
    assert [round(o.sparsity, 3) for o in outcomes] == [0.2, 0.36]
    theta0 = dict(exp.initial_model().named_parameters())
    lth_starts = [w for tag, w in exp.starts if tag.startswith("lth")]
    assert len(lth_starts) == 2
    for start, outcome in zip(lth_starts, outcomes, strict=True):
        for name, w in start.items():
            expected = theta0[name].detach()
            if name in outcome.sparsifier.masks:
                expected = expected * outcome.sparsifier.masks[name]
            assert torch.equal(w, expected), name
    # IMP: round 2's mask only removes weights from round 1's.
    assert all(bool((outcomes[1].sparsifier.masks[n] <= outcomes[0].sparsifier.masks[n]).all())
               for n in outcomes[0].sparsifier.masks)


def test_omp_after_starts_from_the_pruned_dense_checkpoint(tiny_model_path, data_root, tmp_path):
    exp, outcomes = run_spy(tiny_model_path, data_root, tmp_path, "omp_after", [0.36])
    dense = dict(exp.dense_model().named_parameters())
    [(tag, start)] = [(t, w) for t, w in exp.starts if t.startswith("magnitude_after")]
    masks = outcomes[0].sparsifier.masks
    for name, w in start.items():
        assert torch.equal(w, dense[name].detach() * masks[name] if name in masks else dense[name].detach())
    assert exp.dense_trainings == 1
    theta0 = dict(exp.initial_model().named_parameters())
    assert not torch.equal(dense["classifier.weight"], theta0["classifier.weight"])  # it was fine-tuned


def test_random_after_masks_are_not_magnitude_masks(tiny_model_path, data_root, tmp_path):
    # The official "Random (After)" ran magnitude pruning.
    _, omp = run_spy(tiny_model_path, data_root, tmp_path, "omp_after", [0.5])
    _, rnd = run_spy(tiny_model_path, data_root, tmp_path, "random_after", [0.5])
    name = "bert.encoder.layer.0.intermediate.dense.weight"
    a, b = omp[0].sparsifier.masks[name], rnd[0].sparsifier.masks[name]
    agreement = float((a == b).float().mean())
    assert 0.4 < agreement < 0.6  # chance agreement, not identity
    rows = rnd[0].sparsifier.layers()
    assert all(abs(r.sparsity - 0.5) < 0.01 for r in rows)  # uniform per layer, as the public Random


def test_bad_run_requests_are_one_error_line(tiny_model_path, data_root, tmp_path, monkeypatch, capsys):
    # In this process, through main() as the installed command calls it (tests/test_cli.py runs the command itself).
    from smcbench.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cases = [
        (["commonsense/nope", "--data-dir", str(data_root)], "unknown task"),
        (["commonsense/csqa", "--method", "imp", "--sparsity", "0.2", "--data-dir", str(data_root),
          "--model", tiny_model_path], "unknown method 'imp'"),
        (["commonsense/csqa", "--method", "omp_before", "--sparsity", "0.2", "--data-dir", str(tmp_path),
          "--model", tiny_model_path], "pass --data-dir"),
        (["commonsense/csqa", "--method", "lth", "--sparsity", "0.5", "--data-dir", str(data_root),
          "--model", tiny_model_path, "--max-steps", "2"], "not an IMP level"),
        (["commonsense/csqa", "--method", "gmp", "--sparsity", "1.2", "--data-dir", str(data_root)],
         "must be in [0, 1)"),
        # Options follow from the settings schemas: each is checked before any work starts.
        (["commonsense/csqa", "--lr", "-1", "--data-dir", str(data_root)], "--lr: Input should be greater"),
        (["commonsense/csqa", "--method", "gmp", "--rigl-alpha", "0.5", "--data-dir", str(data_root)],
         "method gmp has no setting(s) ['rigl_alpha']"),
        (["commonsense/csqa", "--method", "gmp", "--gmp-end", "1.5", "--data-dir", str(data_root)],
         "--gmp-end: Input should be less than or equal to 1"),
        (["commonsense/winogrande", "--option", "train_variant=q", "--data-dir", str(data_root)],
         "--option train_variant: Input should be 'xs'"),
        (["commonsense/csqa", "--option", "train_variant=m", "--data-dir", str(data_root)],
         "--option train_variant: unknown setting"),
        (["commonsense/csqa", "--schedule", "cosine", "--data-dir", str(data_root)], "unknown schedule 'cosine'"),
    ]
    for args, message in cases:
        monkeypatch.setattr(sys, "argv", ["smc-bench", "run", *args, "--out", str(tmp_path / "out")])
        with pytest.raises(SystemExit) as exit_info:
            main()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize("task, chance", [("commonsense/winogrande", 0.5), ("commonsense/race-m", 0.25),
                                          ("commonsense/race-h", 0.25)])
def test_winogrande_and_race_run_end_to_end(task, chance, tiny_model_path, data_root, tmp_path):
    req = request(tiny_model_path, data_root, tmp_path, "omp_before", [0.36])
    req.spec = TaskSpec(task, tiny_model_path, str(data_root), train_size=12, val_size=4, eval_size=6,
                        max_length=48, options={"train_variant": "xs"} if task.endswith("winogrande") else {})
    [r] = execute(req)
    assert r["metric"]["chance"] == chance and r["metrics"]["eval_examples"] == 6
    total = sum(layer["numel"] for layer in r["layers"])
    assert sum(layer["pruned"] for layer in r["layers"]) == round(0.36 * total)


def test_a_rerun_lth_chain_resumes_from_its_last_finished_round(tiny_model_path, data_root, tmp_path):
    execute(request(tiny_model_path, data_root, tmp_path, "lth", [0.36]))
    first = ResultStore(tmp_path / "results.db").records()
    records = execute(request(tiny_model_path, data_root, tmp_path, "lth", [0.36, 0.488]))
    lines = ResultStore(tmp_path / "results.db").records()
    assert len(lines) == len(first) + 1  # only round 3 was trained
    [new] = [r for r in lines if r["run_id"] not in {f["run_id"] for f in first}]
    assert round(new["target_sparsity"], 3) == 0.488
    masks = [read_masks(f"{r['dir']}/masks.safetensors") for r in records]
    assert all(bool((masks[1][n] <= masks[0][n]).all()) for n in masks[0])  # round 3 prunes within round 2


def test_lth_accepts_rounded_grid_levels(tiny_model_path, data_root, tmp_path):
    # 0.36 and 0.488 are rounded IMP levels (1 - 0.8^2, 1 - 0.8^3 = 0.48799999...); 0.738 stands for 0.737856.
    records = execute(request(tiny_model_path, data_root, tmp_path, "lth", [0.36]))
    assert [round(r["target_sparsity"], 6) for r in records] == [0.36]
    req = request(tiny_model_path, data_root, tmp_path, "lth", [0.2])
    req.sparsities = [0.738]
    req.train = TrainConfig(lr=1e-3, batch_size=4, max_steps=1)
    records = execute(req)
    assert [r["target_sparsity"] for r in records] == [0.737856]
