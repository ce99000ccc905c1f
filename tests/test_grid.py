import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from smcbench.errors import SmcBenchError
from smcbench.runner.grid import expand, run_local
from smcbench.runner.spec import load_spec
from smcbench.runner.store import ResultStore


def write_spec(path, tiny_model_path, data_root, out, **overrides):
    spec = {
        "name": "tiny",
        "out": str(out),
        "data_dir": str(data_root),
        "tasks": [{"task": "commonsense/csqa", "train_size": 16, "val_size": 8, "eval_size": 8, "max_length": 32}],
        "models": [tiny_model_path],
        "methods": ["dense", "omp_after", "lth", "snip"],
        "sparsities": [0.2, 0.36],
        "seeds": [0],
        "train": {"lr": 1e-3, "batch_size": 4, "max_steps": 3},
    }
    spec.update(overrides)
    path.write_text(yaml.safe_dump(spec))
    return path


def test_dag_shares_one_dense_per_seed_and_chains_lth(tiny_model_path, data_root, tmp_path):
    spec = load_spec(str(write_spec(tmp_path / "s.yaml", tiny_model_path, data_root, tmp_path / "out",
                                    seeds=[0, 1])))
    nodes = expand(spec)
    by_label = {n.label.split(": ", 1)[1] + f" s{n.request.spec.seed}": n for n in nodes}
    dense = [n for n in nodes if n.request.method == "dense"]
    assert len(dense) == 2  # one per seed, shared by every After method
    for seed in (0, 1):
        d = by_label[f"dense s{seed}"]
        assert by_label[f"omp_after @ 0.200 s{seed}"].deps == (d.id,)
        r1, r2 = by_label[f"lth round 1 (0.200) s{seed}"], by_label[f"lth round 2 (0.360) s{seed}"]
        assert r1.deps == (d.id,) and r2.deps == (r1.id,)
        assert by_label[f"snip @ 0.360 s{seed}"].deps == ()
    position = {n.id: i for i, n in enumerate(nodes)}
    assert all(position[d] < position[n.id] for n in nodes for d in n.deps)
    assert len({n.id for n in nodes}) == len(nodes)


def test_grid_runs_what_is_missing_and_skips_what_is_done(tiny_model_path, data_root, tmp_path):
    spec = load_spec(str(write_spec(tmp_path / "s.yaml", tiny_model_path, data_root, tmp_path / "out")))
    nodes = expand(spec)
    first = run_local(nodes)
    assert set(first.values()) == {"ran"}
    assert len(ResultStore(tmp_path / "out" / "results.db").records()) == len(nodes)
    again = run_local(expand(spec))
    assert set(again.values()) == {"done"}
    assert len(ResultStore(tmp_path / "out" / "results.db").records()) == len(nodes)


def test_two_workers_run_the_grid_with_dependencies(tiny_model_path, data_root, tmp_path):
    spec = load_spec(str(write_spec(tmp_path / "s.yaml", tiny_model_path, data_root, tmp_path / "out",
                                    methods=["omp_after", "random_before"], sparsities=[0.2])))
    status = run_local(expand(spec), workers=2)
    assert set(status.values()) == {"ran"}
    records = ResultStore(tmp_path / "out" / "results.db").records()
    assert sorted(r["method"] for r in records) == ["dense", "omp_after", "random_before"]


def test_killed_grid_resumes_without_losing_or_duplicating_runs(tiny_model_path, data_root, tmp_path, monkeypatch,
                                                                 capsys):
    from helpers import run_cli

    spec_path = write_spec(tmp_path / "s.yaml", tiny_model_path, data_root, tmp_path / "out",
                           methods=["omp_before", "random_before"], sparsities=[0.2, 0.36],
                           train={"lr": 1e-3, "batch_size": 4, "max_steps": 24, "eval_every": 2})
    cmd = [sys.executable, "-c", "from smcbench.cli import main; main()", "grid", str(spec_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    db = tmp_path / "out" / "results.db"
    checkpoints = tmp_path / "out" / ".checkpoints"
    deadline = time.time() + 180
    # Kill only once a later run has written a checkpoint: the moment is set by the run's progress, not a clock.
    while time.time() < deadline and not (ResultStore(db).records() and checkpoints.is_dir()
                                          and list(checkpoints.rglob("*.safetensors"))):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = ResultStore(db).records()
    assert 1 <= len(before) < 4
    code, _, err = run_cli(monkeypatch, capsys, "grid", str(spec_path))  # resumed in this process
    assert code == 0, err
    after = ResultStore(db).records()
    assert sorted(r["run_id"] for r in after) == sorted({r["run_id"] for r in after})  # no duplicates
    assert len(after) == 4 and {r["run_id"] for r in before} <= {r["run_id"] for r in after}
    assert not list((tmp_path / "out").rglob(".*.tmp"))  # no half-written artefact left as a run


@pytest.mark.parametrize(
    "change, message",
    [
        ({"methods": ["dense", "imp"]}, "unknown method"),
        ({"sparsities": [0.2, 1.5]}, "sparsities"),
        ({"tasks": []}, "tasks"),
        ({"trian": {"lr": 1}}, "trian"),
        ({"train": {"lr": -1}}, "train.lr"),
    ],
)
def test_bad_specs_are_clear_errors(change, message, tiny_model_path, data_root, tmp_path):
    path = write_spec(tmp_path / "s.yaml", tiny_model_path, data_root, tmp_path / "out", **change)
    with pytest.raises(SmcBenchError, match=message):
        expand(load_spec(str(path)))


def test_unreadable_specs_are_clear_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text("tasks: [unclosed")
    with pytest.raises(SmcBenchError, match="not valid YAML"):
        load_spec(str(tmp_path / "bad.yaml"))
    with pytest.raises(SmcBenchError, match="no preset of that name"):
        load_spec("no-such-spec")


def test_the_laptop_track_covers_every_family_with_the_equal_budget_control_and_the_demo_is_its_slice():
    track = load_spec("laptop")
    assert [name for name, _ in track.included()] == ["commonsense", "arithmetic", "protein", "translation"]
    for name, part in track.included():
        nodes = expand(part)
        families = {n.request.spec.task.split("/")[0] for n in nodes}
        assert families == {name}
        methods = {n.request.method for n in nodes}
        assert {"dense", "dense_retrain", "omp_after", "gmp", "omp_before", "snip", "sparsegpt", "wanda"} <= methods
        assert all(n.deps for n in nodes if n.request.method == "dense_retrain")
    commonsense = expand(load_spec("laptop-commonsense"))
    assert [n.request.sparsities for n in commonsense if n.request.method == "structured"] == [[0.488]]
    assert sum(n.request.method == "dense" for n in commonsense) == 1  # the `also` part shares the dense fine-tune
    demo = expand(load_spec("demo"))
    assert {n.request.spec.task for n in demo} == {"commonsense/csqa", "arithmetic/mawps"}
    arithmetic = {n.id for n in expand(load_spec("laptop-arithmetic"))}
    mawps_dense = [n for n in demo if n.request.spec.task == "arithmetic/mawps" and n.request.method == "dense"]
    assert [n.id in arithmetic for n in mawps_dense] == [True]  # the very run of the track


def test_shipped_presets_validate():
    assert load_spec("demo").models == ["minilm"]
    paper = load_spec("paper")
    assert len(paper.sparsities) == 10 and paper.train["max_steps"] == 3000 and paper.models == ["roberta-large"]
    nodes = expand(load_spec("paper-arithmetic"))
    dense = [n.request for n in nodes if n.request.method == "dense"]
    # five folds each of MAWPS and ASDiv-A, plus SVAMP, for both solvers; the paper's settings as task defaults
    assert len(dense) == 2 * (5 + 5 + 1)
    assert {(r.spec.task, r.spec.fold) for r in dense} >= {("arithmetic/mawps", 4), ("arithmetic/svamp", None)}
    g2t = next(r for r in dense if r.spec.model.startswith("graph2tree"))
    assert g2t.train.lr == 8e-4 and g2t.train.epochs == 50 and g2t.train.schedule == "step"


PAPER_METHODS = {"dense", "lth", "omp_after", "random_after", "gmp", "omp_before", "random_before", "snip",
                 "omp_rigl", "random_rigl", "snip_rigl"}


def test_the_paper_protein_preset_holds_the_main_grid_and_table_1():
    nodes = expand(load_spec("paper-protein"))
    assert len({n.id for n in nodes}) == len(nodes)
    esm1b, tape = "facebook/esm1b_t33_650M_UR50S", "tape"
    for task in ("protein/hp-s", "protein/meltome", "protein/hp-s2c2", "protein/hp-s2c5"):
        for model in (esm1b, tape):  # ESM-1b and TAPE beside it, every method, on every dataset
            runs = [n.request for n in nodes if n.request.spec.task == task and n.request.spec.model == model]
            assert {r.method for r in runs} == PAPER_METHODS, (task, model)
    table = [n.request for n in nodes if n.request.spec.task == "protein/hp-s2c2" and n.request.spec.model == esm1b
             and (n.request.method == "dense" or n.request.sparsities == [0.05])]
    assert [r.method for r in table].count("dense") == 1  # one dense fine-tune beside the five subsets
    subsets = {r.settings.include for r in table if r.method == "omp_after"}
    assert len(subsets) == 5
    dense = next(r for r in table if r.method == "dense")
    assert dense.train.lr_groups == ((r"^backbone\.", 1e-6),) and dense.train.batch_size == 3  # offline: no hub
    tape_dense = next(n.request for n in nodes if n.request.spec.model == tape and n.request.method == "dense")
    assert tape_dense.train.lr == 1e-4 and tape_dense.train.epochs == 4.0  # TAPE's own setting, offline


def test_the_paper_commonsense_preset_covers_csqa_race_and_winogrande():
    nodes = expand(load_spec("paper"))
    dense = {n.request.spec.task: n.request for n in nodes if n.request.method == "dense" and n.request.spec.seed == 0}
    assert set(dense) == {"commonsense/csqa", "commonsense/race-m", "commonsense/race-h", "commonsense/winogrande"}
    assert (dense["commonsense/csqa"].train.max_steps, dense["commonsense/csqa"].train.batch_size) == (3000, 16)
    assert (dense["commonsense/race-m"].train.epochs, dense["commonsense/race-m"].train.batch_size) == (3.0, 16)
    wino = dense["commonsense/winogrande"].train
    assert (wino.max_steps, wino.warmup_steps, wino.batch_size, wino.lr) == (23750, 2735, 32, 1e-5)
    for task in dense:
        assert {n.request.method for n in nodes if n.request.spec.task == task} == PAPER_METHODS


def test_paper_all_plans_every_family_and_selects_parts(capsys):
    from smcbench.cli import app

    spec = load_spec("paper-all")
    assert [name for name, _ in spec.included()] == ["commonsense", "appendix-c", "arithmetic", "protein",
                                                     "translation"]
    assert [name for name, _ in spec.included(["protein"])] == ["protein"]
    from typer.testing import CliRunner

    out = CliRunner().invoke(app, ["grid", "paper-all", "--dry-run", "--no-measure", "--part", "translation",
                                 "--part", "arithmetic"])
    assert out.exit_code == 0, out.output
    assert "arithmetic (paper-arithmetic): " in out.output and "translation (paper-translation): " in out.output
    assert "paper-all, all 2 parts:" in out.output and "paper-protein" not in out.output


def test_the_paper_translation_preset_uses_the_papers_mbart_setting_offline():
    nodes = expand(load_spec("paper-translation"))
    dense = [n.request for n in nodes if n.request.method == "dense"]
    assert [r.spec.task for r in dense] == ["translation/2-2", "translation/5-5", "translation/10-10"]
    assert dense[0].train.lr == 1e-6 and dense[0].train.max_steps == 40000
    assert len(nodes) == 3 * (1 + 10 + 10 * 9)  # dense, 10 LTH rounds, 9 other methods x 10 levels, per mix


def test_also_parts_share_runs_and_a_repeated_method_needs_other_settings(tiny_model_path, data_root, tmp_path):
    spec = load_spec(str(write_spec(tmp_path / "s.yaml", tiny_model_path, data_root, tmp_path / "out",
                                    methods=["dense", "omp_after"], sparsities=[0.2],
                                    also=[{"methods": ["dense", "omp_after", {"omp_after": {"include": ["query"]}}],
                                           "sparsities": [0.05]}])))
    nodes = expand(spec)
    labels = sorted(n.label.split(": ", 1)[1] for n in nodes)
    assert labels == ["dense", "omp_after (include=['query']) @ 0.050", "omp_after @ 0.050", "omp_after @ 0.200"]
    twice = write_spec(tmp_path / "t.yaml", tiny_model_path, data_root, tmp_path / "out",
                       methods=["dense", {"gmp": {"interval": 5}}, {"gmp": {"interval": 5}}])
    with pytest.raises(SmcBenchError, match="gmp is listed twice with the same settings"):
        expand(load_spec(str(twice)))
    nested = write_spec(tmp_path / "u.yaml", tiny_model_path, data_root, tmp_path / "out",
                        also=[{"sparsities": [2.0]}])
    with pytest.raises(SmcBenchError, match="also.0: sparsities"):
        expand(load_spec(str(nested)))


def test_grid_runs_each_fold_with_its_own_dense_model(tiny_model_path, data_root, tmp_path):
    spec = load_spec(str(write_spec(tmp_path / "s.yaml", tiny_model_path, data_root, tmp_path / "out",
                                    tasks=[{"task": "arithmetic/mawps", "val_size": 10, "train_size": 16}],
                                    models=[f"gts:{tiny_model_path}"], methods=["omp_after"], sparsities=[0.2],
                                    train={"max_steps": 2})))
    nodes = expand(spec)
    assert len(nodes) == 2 * 5  # every fold by default: a dense run and an After run each
    spec.tasks[0] = spec.tasks[0].model_copy(update={"folds": [1]})
    nodes = expand(spec)
    assert [n.request.spec.fold for n in nodes] == [1, 1] and nodes[1].deps == (nodes[0].id,)
    assert set(run_local(nodes).values()) == {"ran"}
    records = ResultStore(tmp_path / "out" / "results.db").records()
    assert sorted((r["method"], r["fold"]) for r in records) == [("dense", 1), ("omp_after", 1)]


def test_ray_executor_on_a_local_instance(tiny_model_path, data_root, tmp_path):
    pytest.importorskip("ray", reason="the Ray extra is not installed (pip install 'smc-bench[ray]')")
    from smcbench.runner.grid import run_ray

    spec = load_spec(str(write_spec(tmp_path / "s.yaml", tiny_model_path, data_root, tmp_path / "out",
                                    methods=["lth"], sparsities=[0.2, 0.36])))
    nodes = expand(spec)
    assert [len(n.deps) for n in nodes] == [0, 1, 1]  # dense; LTH's rounds, each after the one before it
    status = run_ray(nodes)
    assert set(status.values()) == {"ran"}, status
    records = ResultStore(tmp_path / "out" / "results.db").records()
    assert sorted((r["method"], round(r["target_sparsity"], 3)) for r in records) == [
        ("dense", 0.0), ("lth", 0.2), ("lth", 0.36)]
    assert set(run_ray(expand(spec)).values()) == {"done"}


def test_the_equal_budget_dense_control_retrains_the_dense_model_once(tiny_model_path, data_root, tmp_path):
    import json

    spec = load_spec(str(write_spec(tmp_path / "s.yaml", tiny_model_path, data_root, tmp_path / "out",
                                    methods=["dense_retrain"])))
    nodes = expand(spec)
    by_label = {n.label.split(": ", 1)[1]: n for n in nodes}
    assert sorted(by_label) == ["dense", "dense_retrain"]  # one run, whatever levels the grid lists
    assert by_label["dense_retrain"].deps == (by_label["dense"].id,)
    assert set(run_local(nodes).values()) == {"ran"}
    dense, control = (json.loads(by_label[k].result_path().read_text()) for k in ("dense", "dense_retrain"))
    assert control["target_sparsity"] == 0.0 and control["achieved_sparsity"] < 1e-4  # (padding rows are zero)
    assert control["steps"] == dense["steps"] == 3  # a second full schedule: the After methods' total budget
    assert control["run_id"] != dense["run_id"]


def test_the_dry_run_predicts_time_from_a_probe_then_from_finished_runs_of_the_same_kind(
        tiny_model_path, data_root, tmp_path, monkeypatch):
    import json
    import math
    import statistics

    from smcbench.runner.timing import predict, probes_file

    monkeypatch.setenv("SMCBENCH_CACHE", str(tmp_path / "cache"))
    spec = load_spec(str(write_spec(tmp_path / "s.yaml", tiny_model_path, data_root, tmp_path / "out",
                                    methods=["dense", "omp_after"])))
    nodes = expand(spec)
    said = []
    before = predict(nodes, said.append, measure_missing=False)
    assert {e.source for e in before.values()} == {"unknown"}  # nothing measured, nothing finished
    first = predict(nodes, said.append)
    assert {e.source for e in first.values()} == {"probe"} and all(e.seconds > 0 for e in first.values())
    assert sum("measuring commonsense/csqa" in s for s in said) == 1  # one task configuration, probed once
    [probe] = json.loads(probes_file().read_text()).values()
    # The forward pass's shape for calibration: per BERT layer Q/K/V (one input), the attention output, the
    # intermediate and the output Linear, then the pooler and the classifier; each called once.
    assert probe["forward_s"] > 0 and (probe["linear_groups"], probe["linear_once"]) == (4 * 2 + 2, True)
    run_local(nodes)
    assert all(e.seconds == 0 for e in predict(nodes, said.append).values())  # done
    # Another seed: the same kinds of run, timed by the finished ones (their recorded wall time, per level).
    other = expand(load_spec(str(write_spec(tmp_path / "s1.yaml", tiny_model_path, data_root, tmp_path / "out",
                                            methods=["dense", "omp_after"], seeds=[1]))))
    records = ResultStore(tmp_path / "out" / "results.db").records()
    predicted = predict(other, said.append, measure_missing=False)
    for node in other:
        runs = [r["wall_s"] + r["eval_s"] for r in records if r["method"] == node.request.method]
        assert predicted[node.id].source == "runs"
        assert math.isclose(predicted[node.id].seconds, statistics.median(runs))  # omp_after: either level's


def test_a_grid_records_its_predictions_and_checks_them_when_it_ends(tiny_model_path, data_root, tmp_path,
                                                                      monkeypatch, capsys):
    import json

    from helpers import run_cli
    from smcbench.report.render import build
    from smcbench.runner.timing import PREDICTIONS, against_runs

    monkeypatch.setenv("SMCBENCH_CACHE", str(tmp_path / "cache"))
    path = str(write_spec(tmp_path / "s.yaml", tiny_model_path, data_root, tmp_path / "out",
                          methods=["dense", "omp_after"]))
    # Regression: a grid started before any dry run on the machine recorded every prediction as unknown, silently
    # (the translation part ran 5 minutes that way); it says so, and its dense run is all it does here.
    dense = str(write_spec(tmp_path / "d.yaml", tiny_model_path, data_root, tmp_path / "first", methods=["dense"]))
    code, said, err = run_cli(monkeypatch, capsys, "grid", dense)
    assert code == 0 and "(no time predicted for 1 of the runs to do: no cost measured on this machine yet" in err
    code, said, err = run_cli(monkeypatch, capsys, "grid", path, "--dry-run")  # probes the task once
    assert code == 0, err
    code, said, err = run_cli(monkeypatch, capsys, "grid", path)
    assert code == 0, err
    lines = [json.loads(x) for x in (tmp_path / "out" / PREDICTIONS).read_text().splitlines()]
    assert [x["source"] for x in lines] == ["probe"] * 3 and sum(len(x["runs"]) for x in lines) == 3
    records = ResultStore(tmp_path / "out" / "results.db").records()
    rows = against_runs(tmp_path / "out", records)
    took = sum(r["wall_s"] + r["eval_s"] for r in records)
    assert sum(r["took_s"] for r in rows) == pytest.approx(took, rel=1e-12)
    assert sum(r["predicted_s"] for r in rows) == pytest.approx(sum(x["predicted_s"] for x in lines), rel=1e-12)
    assert "time: the 3 runs that ran were predicted" in said
    assert f"report: smc-bench report --out {tmp_path / 'out'}" in said  # the command that shows them
    build(tmp_path / "out" / "results.db", tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Time: predicted against taken" in md and "| commonsense/csqa | omp_after | 2 | probe |" in md
    # A second grid over the same folder has nothing to do and predicts nothing more.
    code, said, err = run_cli(monkeypatch, capsys, "grid", path)
    assert code == 0 and len((tmp_path / "out" / PREDICTIONS).read_text().splitlines()) == 3
    assert "time:" not in said
    # A prediction that cannot be made (a corrupt cost cache) is said and never stops the grid.
    (tmp_path / "cache" / "costs.json").write_text("{")
    more = str(write_spec(tmp_path / "more.yaml", tiny_model_path, data_root, tmp_path / "out",
                          methods=["dense", "random_before"], sparsities=[0.2]))  # a kind not yet run: a probe
    code, said, err = run_cli(monkeypatch, capsys, "grid", more)
    assert code == 0 and "(no time predictions recorded: " in err and "1 ran, 1 already done" in said


def test_layerwise_calibration_declares_its_forward_passes_to_the_dry_run():
    """Regression: the dry run predicted 15 s for SparseGPT and Wanda runs on GTS that took 85-180 s: sequential
    calibration runs the model over its 16 batches once per group of Linear layers, the whole tree decoder each
    time, and the probe saw none of it."""
    from smcbench.methods import ForwardShape, get_method

    sparsegpt, wanda, gmp = get_method("sparsegpt"), get_method("wanda"), get_method("gmp")
    decoder, encoder = ForwardShape(10, linear_once=False), ForwardShape(10, linear_once=True)
    assert sparsegpt.extra_forwards(sparsegpt.settings(), decoder) == 1 + 16 + 16 * 10
    assert wanda.extra_forwards(wanda.settings(), encoder) == 1 + 16 + 16 * 10 / 2  # each group stops at itself
    assert wanda.extra_forwards(wanda.settings(sequential=False, calibration_batches=4), decoder) == 1 + 4
    assert gmp.extra_forwards(gmp.settings(), decoder) == 0


def test_obert_declares_its_fisher_passes_to_the_dry_run():
    """Regression: the dry run predicted ~5 min for a one-shot oBERT run on the laptop track that took 770 s (its
    128 gradients and Fisher work were invisible to the probe)."""
    from smcbench.methods import get_method

    obert, gmp = get_method("obert"), get_method("gmp")
    assert obert.extra_updates(obert.settings(one_shot=True, obert_gradients=128), 300, 8) == 2 * 128
    assert obert.extra_updates(obert.settings(one_shot=True, obert_gradients=128, obert_grad_batch=4), 300, 8) == 128
    gradual = obert.settings(obert_gradients=16)
    steps = obert.extra_updates(gradual, 300, 8) / (2 * 16)
    assert steps == int(steps) > 1  # one Fisher per pruning step of GMP's schedule
    assert gmp.extra_updates(gmp.settings(), 300, 8) == 0
