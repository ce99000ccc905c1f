"""Per-example outcomes kept with every run, and the report's verdicts built on them, end to end on tiny CSQA."""

import csv
from pathlib import Path

import pytest

from helpers import csqa_request
from smcbench.outcomes import OUTCOMES, read
from smcbench.report.render import build
from smcbench.runner.single import execute
from smcbench.runner.store import ResultStore


@pytest.fixture(scope="module")
def runs(tiny_model_path, data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("verdict-runs")
    records = execute(csqa_request(tiny_model_path, data_root, out, "omp_after", [0.2, 0.9], keep_weights="needed"))
    return out, records


def test_every_run_keeps_its_per_example_outcomes_and_the_dense_run_what_each_example_is(runs):
    out, records = runs
    [dense] = [r for r in ResultStore(out / "results.db").records() if r["method"] == "dense"]
    for r in [dense, *records]:
        o = read(Path(r["dir"]) / OUTCOMES)
        group = o.groups[""]
        assert o.kind == "binary" and len(group.ids) == 8 == r["outcomes"]["examples"]
        assert sum(group.values) / 8 == r["metrics"]["accuracy"]  # the metric is their mean, exactly
        assert (group.texts is not None) == (r["method"] == "dense")  # texts once, in the reference
    ids = read(Path(dense["dir"]) / OUTCOMES).groups[""].ids
    assert all(read(Path(r["dir"]) / OUTCOMES).groups[""].ids == ids for r in records)  # pairable by id
    assert "*" in read(Path(dense["dir"]) / OUTCOMES).groups[""].texts[0]  # the right answer is marked


def test_the_report_judges_by_paired_tests_and_says_what_it_cannot_resolve(runs, tmp_path):
    out, _ = runs
    md = (build(out / "results.db", tmp_path / "report").parent / "report.md").read_text()
    assert "## Failing sparsity: commonsense/csqa" in md and "## Paired verdicts by level" in md
    assert "Holm-corrected" in md and "cannot be resolved with 8 examples" in md
    paper = (build(out / "results.db", tmp_path / "paper", rule="paper").parent / "report.md").read_text()
    assert "## Failing sparsity (the paper's rule): commonsense/csqa" in paper and "Paired verdicts" not in paper


def test_runs_without_outcomes_are_judged_by_the_papers_rule_and_the_report_says_so(runs, tmp_path):
    out, records = runs
    moved = Path(records[0]["dir"]) / OUTCOMES
    kept = moved.read_bytes()
    moved.unlink()
    try:
        md = (build(out / "results.db", tmp_path / "report").parent / "report.md").read_text()
    finally:
        moved.write_bytes(kept)
    assert "judged by the paper's rule: its run at 0.200 (seed 0) has no per-example outcomes" in md
    across = md.split("## Across tasks")[1].split("##")[0]
    assert "Each cell: the paper's: the first level" in across and "paired bootstrap" not in across  # named


def test_the_export_carries_each_runs_verdict_interval_and_rule(runs, tmp_path):
    from typer.testing import CliRunner

    from smcbench.cli import app

    out, _ = runs
    result = CliRunner().invoke(app, ["report", "--out", str(out), "--to", str(tmp_path / "r"), "--csv",
                                      str(tmp_path / "runs.csv")])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "runs.csv")))
    sparse = [r for r in rows if r["method"] == "omp_after"]
    assert {r["verdict_rule"] for r in sparse} == {"paired"}
    for r in sparse:
        assert r["verdict"] in ("fails", "holds", "inconclusive")
        assert float(r["delta_low"]) <= float(r["delta"]) <= float(r["delta_high"])
    dense = next(r for r in rows if r["method"] == "dense")
    assert dense["verdict_rule"] == "" and dense["metric_name"] == "accuracy"  # the reference is not judged


def test_a_folder_of_run_folders_gets_one_report_across_them(runs, tiny_model_path, data_root, tmp_path,
                                                              monkeypatch, capsys):
    import shutil

    from helpers import run_cli

    out, _ = runs
    track = tmp_path / "track"
    shutil.copytree(out, track / "a")
    other = tmp_path / "tiny-b"  # another model: another (task, model) group, in its own part
    shutil.copytree(tiny_model_path, other)
    execute(csqa_request(str(other), data_root, track / "b", "omp_after", [0.5], keep_weights="needed"))
    code, said, _ = run_cli(monkeypatch, capsys, "report", "--out", str(track), "--csv", str(tmp_path / "all.csv"))
    assert code == 0 and "one report across 2 run folders: a, b" in said
    md = (track / "report" / "report.md").read_text()
    for model in (Path(tiny_model_path).name, "tiny-b"):
        assert f"## Failing sparsity: commonsense/csqa / {model}" in md
    across = md.split("## Across tasks")[1].split("\n## ")[0]
    assert f"commonsense/csqa / {Path(tiny_model_path).name}" in across and "commonsense/csqa / tiny-b" in across
    rows = list(csv.DictReader(open(tmp_path / "all.csv")))
    assert len(rows) == len(ResultStore(track / "a" / "results.db").records()) + 2  # b: dense and one level
    before = sorted(other.rglob("*"))
    code, _, err = run_cli(monkeypatch, capsys, "report", "--out", str(other))  # a model folder: no runs
    assert code != 0 and "no results.db in it or its subfolders" in err and sorted(other.rglob("*")) == before


def test_one_method_against_another_pairs_their_answers_level_by_level(tiny_model_path, data_root, tmp_path,
                                                                       monkeypatch, capsys):
    from helpers import run_cli
    from smcbench.errors import SmcBenchError
    from smcbench.report.versus import versus

    for method in ("omp_after", "omp_before"):
        execute(csqa_request(tiny_model_path, data_root, tmp_path, method, [0.2, 0.9]))
    records = ResultStore(tmp_path / "results.db").records()
    rows = versus(records, "omp_after", "omp_before", resamples=500)
    assert [r.sparsity for r in rows] == [0.2, 0.9]
    for r in rows:
        a, b = ({x["method"]: x for x in records if x["target_sparsity"] == r.sparsity}[m] for m in
                ("omp_after", "omp_before"))
        oa, ob = (read(Path(x["dir"]) / OUTCOMES).groups[""].values for x in (a, b))
        assert (r.a, r.b) == (a["metrics"]["accuracy"], b["metrics"]["accuracy"])
        assert r.level.delta == pytest.approx(r.b - r.a, abs=1e-12)
        assert (r.level.lost, r.level.gained) == (sum(x and not y for x, y in zip(oa, ob, strict=True)),
                                                  sum(y and not x for x, y in zip(oa, ob, strict=True)))
        assert 0 < r.p_two_sided <= 1
    swapped = versus(records, "omp_before", "omp_after", resamples=500)
    assert [(s.level.delta, s.level.lost, s.level.gained) for s in swapped] == [
        (pytest.approx(-r.level.delta, abs=1e-12), r.level.gained, r.level.lost) for r in rows]
    with pytest.raises(SmcBenchError, match="no task in these results has runs of both 'omp_after' and 'snip'"):
        versus(records, "omp_after", "snip")
    code, said, err = run_cli(monkeypatch, capsys, "versus", "omp_after", "omp_before", "--out", str(tmp_path))
    assert code == 0, err
    assert "omp_before − omp_after: paired bootstrap" in said and len(said.strip().splitlines()) == 2 + 2
