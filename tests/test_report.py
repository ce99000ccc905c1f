import pytest
import torch

from smcbench.errors import SmcBenchError
from smcbench.report import analysis
from smcbench.report.render import build
from smcbench.runner.store import ResultStore
from smcbench.sparsity.report import relative_change


def rec(method, s, acc, seed=0, run=None):
    return {"run_id": run or f"{method}-{s}-{seed}", "task": "commonsense/csqa", "model": "m", "method": method,
            "target_sparsity": s, "achieved_sparsity": s, "metrics": {"accuracy": acc, "chance": 0.2},
            "seed": seed, "finished_at": "2026", "layers": [
                {"name": "l0.weight", "shape": [2, 2], "numel": 4, "pruned": round(4 * s), "sparsity": s,
                 "collapsed": False},
                {"name": "l1.weight", "shape": [2, 2], "numel": 4, "pruned": 4 if s > 0.5 else 0,
                 "sparsity": 1.0 if s > 0.5 else 0.0, "collapsed": s > 0.5}]}


def test_curves_average_over_seeds():
    points = analysis.curves([rec("gmp", 0.2, 0.5, 0), rec("gmp", 0.2, 0.7, 1), rec("gmp", 0.36, 0.4, 0)])["gmp"]
    assert [(p.sparsity, p.seeds) for p in points] == [(0.2, 2), (0.36, 1)]
    assert points[0].mean == pytest.approx(0.6) and points[0].std == pytest.approx(0.1414, abs=1e-3)


def test_failing_sparsity_uses_the_dense_spread_or_an_absolute_tolerance():
    dense = analysis.curves([rec("dense", 0.0, 0.70, 0), rec("dense", 0.0, 0.74, 1)])["dense"]
    mean, tol, how = analysis.dense_reference(dense)
    assert mean == pytest.approx(0.72) and tol == pytest.approx(0.0283, abs=1e-3) and "2 seeds" in how
    points = [analysis.Point(0.2, 0.71, 0, 1), analysis.Point(0.36, 0.69, 0, 1), analysis.Point(0.488, 0.72, 0, 1)]
    assert analysis.failing_sparsity(points, mean, tol) == (0.2, 0.36)  # a later recovery does not count
    assert analysis.failing_sparsity(points[:1], mean, tol) == (0.2, None)
    assert analysis.failing_sparsity([analysis.Point(0.2, 0.5, 0, 1)], mean, tol) == (None, 0.2)
    one = analysis.curves([rec("dense", 0.0, 0.7)])["dense"]
    assert analysis.dense_reference(one)[1] == 0.01  # accuracy's declared tolerance


def test_failing_sparsity_follows_the_metric_direction():
    from smcbench.metrics import Metric

    points = [analysis.Point(0.2, 0.40, 0, 1), analysis.Point(0.36, 0.52, 0, 1)]
    lower = Metric("mse", higher_is_better=False)
    assert analysis.failing_sparsity(points, 0.5, 0.01, lower) == (0.2, 0.36)  # an error of 0.40 beats 0.5
    assert analysis.failing_sparsity(points, 0.5, 0.01) == (None, 0.2)  # as accuracy, 0.40 is worse
    assert analysis.metric_of({"metric": lower.to_dict(), "metrics": {"mse": 0.3, "accuracy": 0.9}}) == 0.3


def test_mask_overlap_is_jaccard_of_kept_weights():
    a = {"w": torch.tensor([True, True, False, False]), "v": torch.tensor([True, False])}
    b = {"w": torch.tensor([True, False, True, False]), "v": torch.tensor([True, False])}
    overall, per_layer = analysis.mask_overlap(a, b)
    assert per_layer == {"w": pytest.approx(1 / 3), "v": 1.0}
    assert overall == pytest.approx(2 / 4)
    assert analysis.random_overlap(0.5) == pytest.approx(1 / 3)
    gen = torch.Generator().manual_seed(0)
    r1, r2 = torch.rand(200_000, generator=gen) > 0.5, torch.rand(200_000, generator=gen) > 0.5
    assert analysis.jaccard(r1, r2) == pytest.approx(analysis.random_overlap(0.5), abs=0.01)


def test_relative_weight_change():
    before = {"w": torch.tensor([3.0, 4.0])}
    after = {"w": torch.tensor([3.0, 4.5])}
    assert relative_change(after, before, ["w"]) == {"w": pytest.approx(0.1)}


def test_report_from_a_small_results_database(tmp_path):
    store = ResultStore(tmp_path / "results.db")
    for r in [rec("dense", 0.0, 0.6), rec("omp_after", 0.2, 0.62), rec("omp_after", 0.738, 0.3),
              rec("snip", 0.2, 0.4), rec("snip", 0.738, 0.21)]:
        store.append(r)
    path = build(tmp_path / "results.db", tmp_path / "report")
    html = path.read_text()
    md = (tmp_path / "report" / "report.md").read_text()
    assert "data:image/png;base64," in html  # self-contained
    assert "| omp_after | 0.200 | 0.738 |" in md and "| snip | - | 0.200 |" in md
    assert "collapsed tensors" in md and "l1" in md
    assert sorted(p.name for p in (tmp_path / "report").glob("*.png")) == [
        "across-tasks-difficulty.png", "across-tasks-failing.png", "curves-commonsense-csqa-m.png",
        "layerwise-commonsense-csqa-m-0.738.png"]


def test_variants_of_a_method_are_separate_curves_not_pooled_like_seeds(tmp_path):
    store = ResultStore(tmp_path / "results.db")
    store.append(rec("dense", 0.0, 0.8))
    for include, acc in (("query", 0.7), ("key|value", 0.5)):
        r = rec("omp_after", 0.05, acc, run=include)
        store.append({**r, "config": {"settings": {"preset": "esm", "include": [include]}}})
    store.append({**rec("gmp", 0.05, 0.6), "config": {"settings": {"preset": "esm"}}})
    store.append({**rec("omp_after", 0.05, 0.9, run="all"), "config": {"settings": {"preset": "esm"}}})
    build(tmp_path / "results.db", tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| omp_after (include=query) | 0.700 |" in md
    assert "| omp_after (include=key\\|value) | 0.500 |" in md  # a pipe in a regex is not a column
    html = (tmp_path / "report" / "report.html").read_text()
    assert "<td>omp_after (include=key|value)</td><td>0.500</td>" in html
    assert "| gmp | 0.600 |" in md  # a setting every run shares stays out of the name
    assert "| omp_after | 0.900 |" in md  # the variant with the default include


def test_a_declared_breakdown_is_a_table_of_parts_with_dense_first(tmp_path):
    store = ResultStore(tmp_path / "results.db")
    metric = {"name": "bleu", "higher_is_better": True, "chance": None, "secondary": [],
              "breakdown": ["bleu_fr-en", "bleu_en-fr"]}
    for method, s, seed, parts in (("dense", 0.0, 0, (30.0, 20.0)), ("dense", 0.0, 1, (32.0, 22.0)),
                                   ("gmp", 0.2, 0, (28.0, 19.0)), ("gmp", 0.488, 0, (25.0, 10.0)),
                                   ("gmp", 0.738, 0, (5.0, 1.0))):
        r = rec(method, s, 0.0, seed=seed)
        store.append({**r, "metric": metric, "metrics": {"bleu": sum(parts) / 2, "bleu_fr-en": parts[0],
                                                          "bleu_en-fr": parts[1]}})
    build(tmp_path / "results.db", tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| part | dense | gmp @ 0.488 |" in md  # the middle level by default
    assert "| bleu_fr-en | 31.00 | 25.00 |" in md and "| bleu_en-fr | 21.00 | 10.00 |" in md


def test_the_tasks_data_notes_appear_once_under_the_task(tmp_path):
    store = ResultStore(tmp_path / "results.db")
    note = "HP-S2C5's five classes group its seven growth temperatures: inferred from the paper's class counts."
    for r in [rec("dense", 0.0, 0.6), rec("omp_after", 0.2, 0.62, seed=1)]:
        store.append({**r, "data": {"notes": [note]}})
    html = build(tmp_path / "results.db", tmp_path / "report").read_text()
    md = (tmp_path / "report" / "report.md").read_text()
    assert md.count(note) == 1 and "## About the data: commonsense/csqa / m" in md
    assert "inferred from the paper&#x27;s class counts" in html


def test_report_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(SmcBenchError, match="no finished runs"):
        build(tmp_path / "results.db", tmp_path / "report")


def test_rescan_rebuilds_the_database_from_run_folders(tmp_path):
    import json

    folder = tmp_path / "runs" / "gmp" / "x" / "abc"
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps(rec("gmp", 0.2, 0.5, run="abc")))
    hidden = tmp_path / "runs" / "gmp" / "x" / ".def.tmp"
    hidden.mkdir()
    (hidden / "result.json").write_text(json.dumps(rec("gmp", 0.36, 0.5, run="def")))
    store = ResultStore(tmp_path / "results.db")
    assert store.rescan(tmp_path) == 1 and store.rescan(tmp_path) == 0
    assert [r["run_id"] for r in store.records()] == ["abc"]


def test_report_shows_the_sparsity_learned_methods_reached_by_themselves(tmp_path):
    store = ResultStore(tmp_path / "results.db")
    store.append(rec("dense", 0.0, 0.6))
    for lam, reached in ((0.1, 0.12), (10.0, 0.81)):
        r = rec("l0", 0.5, 0.5, run=f"l0-{lam}")
        r["config"] = {"settings": {"l0_lambda": lam}}
        r["notes"] = {"reached_sparsity": reached, "learned_validation": 0.55}
        r["validation_best"] = 0.52
        store.append(r)
    md = (build(tmp_path / "results.db", tmp_path / "report").parent / "report.md").read_text()
    section = md.split("## Learned sparsity: commonsense/csqa / m")[1]
    assert "| l0 (l0_lambda=0.1) | 0.500 | 0.120 | 0.550 | 0.520 |" in section
    assert "| l0 (l0_lambda=10.0) | 0.500 | 0.810 | 0.550 | 0.520 |" in section


def test_the_report_opens_with_every_methods_failing_level_on_every_task_and_ends_with_metadata(tmp_path):
    store = ResultStore(tmp_path / "results.db")
    for task, dense, omp in (("arithmetic/mawps", 0.9, (0.89, 0.5)), ("arithmetic/svamp", 0.4, (0.2, 0.1))):
        for r in (rec("dense", 0.0, dense), rec("omp_after", 0.2, omp[0]), rec("omp_after", 0.738, omp[1]),
                  rec("gmp", 0.2, dense)):
            store.append({**r, "task": task, "run_id": f"{task}-{r['run_id']}", "code_version": "0.3+abc",
                          "finished_at": "2026-11-23T06:00:00Z"})
    html = build(tmp_path / "results.db", tmp_path / "report").read_text()
    md = (tmp_path / "report" / "report.md").read_text()
    across = md.split("## Across tasks: first failing sparsity")[1].split("## ")[0]
    assert "| method | arithmetic/mawps / m | arithmetic/svamp / m |" in across
    assert "| dense (accuracy) | 0.900 | 0.400 |" in across
    assert "| omp_after | 0.738 | 0.200 |" in across  # the harder task fails earlier
    assert "| gmp | - (> 0.200) | - (> 0.200) |" in across  # never fails, up to the highest level it ran
    assert md.index("Across tasks") < md.index("## Accuracy: arithmetic/mawps")
    assert "[Accuracy: arithmetic/mawps / m](#accuracy-arithmeticmawps--m)" in md
    assert "<h2 id='accuracy-arithmeticmawps--m'>" in html and "href='#accuracy-arithmeticmawps--m'" in html
    meta = md.split("## Run metadata")[1]
    assert "| runs | 8 |" in meta and "0.3+abc" in meta and "torch" in meta


def test_with_one_dense_seed_the_tolerance_is_the_metrics_own():
    from smcbench.metrics import Metric

    bleu = Metric("bleu", tolerance=1.0)
    assert Metric.of({"metric": bleu.to_dict(), "metrics": {}}).tolerance == 1.0
    assert Metric.of({"metric": {"name": "accuracy", "higher_is_better": True}, "metrics": {}}).tolerance == 0.01
    dense = [analysis.Point(0.0, 0.36, 0.0, 1)]
    mean, tolerance, how = analysis.dense_reference(dense, bleu)
    assert tolerance == 1.0 and "absolute 1" in how
    assert analysis.failing_sparsity([analysis.Point(0.2, 0.32, 0, 1)], mean, tolerance, bleu) == (0.2, None)


def test_a_dense_control_is_shown_beside_dense_and_never_judged(tmp_path):
    store = ResultStore(tmp_path / "results.db")
    for r in (rec("dense", 0.0, 0.40), rec("dense_retrain", 0.0, 0.46), rec("omp_after", 0.2, 0.45),
              rec("omp_after", 0.36, 0.30)):
        store.append(r)
    build(tmp_path / "results.db", tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    across = md.split("## Across tasks: first failing sparsity")[1].split("## ")[0]
    assert "| dense (accuracy) | 0.400 |" in across
    assert "| dense_retrain (dense control) | 0.460 |" in across
    assert "| omp_after | 0.360 |" in across  # judged against dense, not against the control
    assert not any(line.startswith("| dense_retrain |") for line in md.splitlines())
    assert "## Accuracy: commonsense/csqa / m\n\ndense 0.400; dense_retrain 0.460 (a dense control, not judged)" in md


def test_a_metrics_baselines_are_shown_beside_dense_and_a_dense_model_that_does_not_beat_one_is_flagged(tmp_path):
    from smcbench.metrics import Metric

    metric = Metric("accuracy", chance=0.5, tolerance=0.01,
                    baselines=("majority_rate", "composition_accuracy")).to_dict()
    store = ResultStore(tmp_path / "results.db")
    for fold, (dense, composition) in enumerate(((0.78, 0.82), (0.80, 0.78))):  # folds pool like seeds
        for r in (rec("dense", 0.0, dense), rec("omp_after", 0.2, dense - 0.1)):
            store.append({**r, "run_id": f"{r['run_id']}-{fold}", "task": "protein/hp-s2c2", "fold": fold,
                          "metric": metric, "metrics": {**r["metrics"], "majority_rate": 0.6,
                                                        "composition_accuracy": composition}})
    build(tmp_path / "results.db", tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    across = md.split("## Across tasks: first failing sparsity")[1].split("## ")[0]
    assert "| composition_accuracy (baseline) | 0.800 |" in across and "| majority_rate (baseline) | 0.600 |" in across
    assert ("chance 0.5; composition_accuracy 0.800 (a baseline from the data alone); majority_rate 0.600 (a "
            "baseline from the data alone). Dense is no better than composition_accuracy:") in md
    findings = md.split("## The paper's findings at this scale: 1. every method fails")[1].split("## ")[0]
    assert "(0.200; dense 0.790 no better than composition_accuracy 0.800) |" in findings
    store.append({**rec("dense", 0.0, 0.9), "run_id": "other", "task": "protein/hp-s2c5", "metric": metric,
                  "metrics": {"accuracy": 0.9, "majority_rate": 0.6, "composition_accuracy": 0.8}})
    build(tmp_path / "results.db", tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert md.count("Dense is no better than") == 1  # 0.9 beats 0.8: nothing to flag on the other task
    assert analysis.baselines(analysis.with_variants([rec("dense", 0.0, 0.5)])) == {}  # records without any


def test_the_findings_section_reads_the_papers_findings_from_the_verdicts(tmp_path):
    store = ResultStore(tmp_path / "results.db")
    # MAWPS (easy): Before methods fail at 0.36, After never up to 0.488; SVAMP (hard): everything fails earlier.
    curves = {"arithmetic/mawps": (0.9, {"omp_before": (0.9, 0.5, 0.4), "snip": (0.895, 0.6, 0.5),
                                         "omp_after": (0.9, 0.9, 0.895), "lth": (0.9, 0.895, 0.9),
                                         "gmp": (0.9, 0.85, 0.8)}),
              "arithmetic/svamp": (0.4, {"omp_before": (0.2, 0.1, 0.1), "snip": (0.2, 0.1, 0.1),
                                         "omp_after": (0.4, 0.3, 0.2), "lth": (0.395, 0.2, 0.1),
                                         "gmp": (0.3, 0.2, 0.1)})}
    for task, (dense, methods) in curves.items():
        store.append({**rec("dense", 0.0, dense), "task": task, "run_id": f"{task}-dense"})
        for method, values in methods.items():
            for s, v in zip((0.2, 0.36, 0.488), values, strict=True):
                store.append({**rec(method, s, v), "task": task, "run_id": f"{task}-{method}-{s}"})
    build(tmp_path / "results.db", tmp_path / "report", rule="paper")
    md = (tmp_path / "report" / "report.md").read_text()
    found = "".join(part.split("\n## ")[0] for part in md.split("## The paper's findings at this scale")[1:])
    assert "| arithmetic/mawps / m | 0 of 5 | 3 of 5 | 3 of 5 (0.488) |" in found  # finding 1: omp_before, snip, gmp
    assert "| arithmetic/svamp / m | 3 of 5 | 5 of 5 | 5 of 5 (0.488) |" in found  # After methods hold 0.2 (±0.01)
    assert "| arithmetic/mawps / m | 0.360 | > 0.488 | 0.360 | yes |" in found  # finding 3, per task
    assert "| arithmetic/svamp / m | 0.200 | 0.360 | 0.200 | yes |" in found
    assert ("| arithmetic / m | 5 | arithmetic/svamp (dense 0.400: 0.200), arithmetic/mawps (dense 0.900: 0.360) | "
            "yes |") in found  # finding 2


def test_harder_tasks_cannot_be_ordered_when_the_median_method_fails_in_neither(tmp_path):
    """Regression: the laptop track's SVAMP and MAWPS both had a median method that never failed up to 0.488; the
    finding printed "0.489" (its rank for "never") for both and answered "no"."""
    store = ResultStore(tmp_path / "results.db")
    curves = {"arithmetic/mawps": (0.8, {"omp_before": (0.6, 0.5), "omp_after": (0.8, 0.8), "sparsegpt": (0.8, 0.8)}),
              "arithmetic/svamp": (0.4, {"omp_before": (0.4, 0.4), "omp_after": (0.4, 0.4), "sparsegpt": (0.4, 0.4)})}
    for task, (dense, methods) in curves.items():
        store.append({**rec("dense", 0.0, dense), "task": task, "run_id": f"{task}-dense"})
        for method, values in methods.items():
            for s, v in zip((0.2, 0.488), values, strict=True):
                store.append({**rec(method, s, v), "task": task, "run_id": f"{task}-{method}-{s}"})
    build(tmp_path / "results.db", tmp_path / "report", rule="paper")
    md = (tmp_path / "report" / "report.md").read_text()
    found = md.split("## The paper's findings at this scale: 2. harder tasks fail earlier")[1].split("\n## ")[0]
    assert ("| arithmetic / m | 3 | arithmetic/svamp (dense 0.400: > 0.488), arithmetic/mawps (dense 0.800: > 0.488) "
            "| cannot tell: the median method fails in none up to the highest level run |") in found
    # The same for After against Before when neither stage's median method fails (the track's protein tasks).
    stages = md.split("## The paper's findings at this scale: 3.")[1].split("\n## ")[0]
    assert ("| arithmetic/svamp / m | > 0.488 | > 0.488 | - | cannot tell: neither fails up to the highest level "
            "run |") in stages


def test_harder_tasks_cannot_be_ordered_when_the_median_method_fails_at_the_one_level_run(tmp_path):
    """Regression: the laptop track's translation part ran 48.8 % only, where the median method failed on both
    mixes; the finding answered "no: the same level", though no lower level was run that could order them."""
    store = ResultStore(tmp_path / "results.db")
    for task, dense in (("translation/2-2", 0.8), ("translation/10-10", 0.4)):
        store.append({**rec("dense", 0.0, dense), "task": task, "run_id": f"{task}-dense"})
        for method in ("omp_before", "omp_after", "sparsegpt"):
            store.append({**rec(method, 0.488, dense / 2), "task": task, "run_id": f"{task}-{method}"})
    build(tmp_path / "results.db", tmp_path / "report", rule="paper")
    md = (tmp_path / "report" / "report.md").read_text()
    found = md.split("## The paper's findings at this scale: 2. harder tasks fail earlier")[1].split("\n## ")[0]
    assert ("| translation / m | 3 | translation/10-10 (dense 0.400: 0.488), translation/2-2 (dense 0.800: 0.488) | "
            "cannot tell: the median method fails at the lowest level run in every task |") in found


def test_the_lazy_regime_finding_reads_stages_masks_and_the_dense_weight_change(tmp_path):
    """Finding 4 per task: the dense fine-tune's median relative change, and the most similar During and After
    masks at the highest level both ran (chosen by the methods' stages, never by their names)."""
    from smcbench.sparsity.sparsifier import write_masks

    store = ResultStore(tmp_path / "results.db")
    store.append({**rec("dense", 0.0, 0.9), "weight_change": {"a": 0.01, "b": 0.02, "c": 0.5}})
    keep = torch.ones(100, dtype=torch.bool)
    keep[:50] = False
    masks = {"gmp": keep, "omp_after": keep.clone(), "omp_before": keep.roll(10)}  # during, after, before
    masks["omp_after"][[50, 51]] = False  # 48 of the 50 kept weights shared: Jaccard 48 / 50
    masks["omp_after"][[0, 1]] = True
    for method, mask in masks.items():
        for s, acc in ((0.2, 0.9), (0.5, 0.5)):
            folder = tmp_path / f"{method}-{s}"
            folder.mkdir()
            write_masks(folder / "masks.safetensors", {"l0.weight": mask.reshape(10, 10)})
            store.append({**rec(method, s, acc), "dir": str(folder), "config": {"settings": {}}})
    build(tmp_path / "results.db", tmp_path / "report", rule="paper")
    md = (tmp_path / "report" / "report.md").read_text()
    found = md.split("## The paper's findings at this scale: 4. the lazy regime")[1].split("\n## ")[0]
    assert "| commonsense/csqa / m | 0.020 | gmp vs omp_after at 0.500 | 0.923 (random 0.333) | no |" in found


def test_runs_trained_with_different_settings_in_one_group_are_flagged(tmp_path):
    """Regression: the report groups runs by task and model, so a dense run with torch's dropout and sparse runs
    with pcg64 (separate commands, one output folder) were paired without a word."""
    store = ResultStore(tmp_path / "results.db")
    store.append({**rec("dense", 0.0, 0.6), "config": {"train": {"lr": 1e-4}}})
    for s in (0.2, 0.488):
        store.append({**rec("omp_after", s, 0.5), "config": {"train": {"lr": 1e-4, "dropout_rng": "pcg64"}}})
    build(tmp_path / "results.db", tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert ("Runs trained with different settings are mixed here (dropout_rng: default (1 run), pcg64 (2 runs)): "
            "the verdicts pair them as they are") in md
    alike = ResultStore(tmp_path / "alike.db")
    for r in (rec("dense", 0.0, 0.6), rec("omp_after", 0.2, 0.5)):
        alike.append({**r, "config": {"train": {"lr": 1e-4}}})
    build(tmp_path / "alike.db", tmp_path / "alike")
    assert "trained with different settings" not in (tmp_path / "alike" / "report.md").read_text()
