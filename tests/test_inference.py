"""Inference backends: the same outputs as the masked dense model, the pattern checks, sizes on disk, the
measurement end to end on a grid's runs, and the report's section."""

import json

import pytest
import torch

from helpers import csqa_request
from smcbench.inference.backends import BACKENDS, SparseLinear, block_size, get_backend, is_two_four
from smcbench.inference.results import best, crossover, ratio
from smcbench.inference.size import disk_sizes


def linear_masks(net, level, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"{n}.weight": torch.rand(m.weight.shape, generator=g) >= level
            for n, m in net.named_modules() if isinstance(m, torch.nn.Linear) and ".layer." in n}


@pytest.mark.parametrize("kind", ["csr", "bsr"])
def test_sparse_linear_computes_the_masked_linear(kind):
    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 16)
    mask = torch.rand(16, 32) > 0.8
    if kind == "bsr":
        mask = (torch.rand(4, 8) > 0.5).repeat_interleave(4, 0).repeat_interleave(4, 1)
    weight = lin.weight.detach() * mask
    sparse = weight.to_sparse_csr() if kind == "csr" else weight.to_sparse_bsr((4, 4))
    x = torch.randn(3, 5, 32)
    torch.testing.assert_close(SparseLinear(sparse, lin.bias)(x), torch.nn.functional.linear(x, weight, lin.bias),
                               atol=1e-5, rtol=1e-5)


def test_pattern_checks():
    blocks = (torch.rand(4, 2) > 0.5).repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert block_size(blocks) == 8
    assert block_size(torch.rand(32, 32) > 0.5) is None
    assert get_backend("bsr").unfit({"w": torch.rand(32, 32) > 0.5}) is not None
    assert get_backend("bsr").unfit({"w": blocks}) is None
    two_four = torch.tensor([[1, 0, 1, 0, 0, 1, 1, 0]], dtype=torch.bool)
    assert is_two_four(two_four) and not is_two_four(torch.ones(1, 8, dtype=torch.bool))
    if not torch.cuda.is_available():
        assert "no CUDA device" in get_backend("2:4").unavailable()
    some = torch.ones(8, 8, dtype=torch.bool)
    some[2, 3] = False
    assert get_backend("shrunk").unfit({"w": some}) is not None
    some[2] = some[:, 3] = False  # whole rows and columns only: units can go
    assert get_backend("shrunk").unfit({"w": some}) is None


def test_sizes_on_disk_hold_the_kept_values_and_one_bit_per_weight():
    torch.manual_seed(0)
    w = torch.randn(256, 256)
    mask = torch.rand(256, 256) > 0.9
    sizes = disk_sizes({"w": w * mask, "b": torch.randn(256)}, {"w": mask})
    payload_dense = (256 * 256 + 256) * 4
    payload_bitmask = 256 * 256 // 8 + int(mask.sum()) * 4 + 256 * 4
    assert 0 <= sizes["dense"] - payload_dense < 1000  # the rest is the safetensors header
    assert 0 <= sizes["bitmask"] - payload_bitmask < 1000
    assert sizes["bitmask_zlib"] < sizes["bitmask"] < sizes["dense"]


def row(level, dense_ms, csr_ms, run_id="r"):
    def ok(ms):
        return {"status": "ok", "latency_ms": {"median": ms}, "throughput": {"median": 1000 / ms}}

    return {"run_id": run_id, "achieved_sparsity": level, "target_sparsity": level, "pattern": "unstructured",
            "backends": {"dense": ok(dense_ms), "csr": ok(csr_ms), "bsr": {"status": "not measured: x"}}}


def test_pattern_of_masks():
    from smcbench.inference.results import pattern_of

    rows_gone = torch.ones(8, 8, dtype=torch.bool)
    rows_gone[[1, 4]] = False
    rows_gone[:, 6] = False
    assert pattern_of({"w": rows_gone}) == "structured"
    scattered = rows_gone.clone()
    scattered[0, 0] = False
    assert pattern_of({"w": scattered}) == "unstructured"
    assert pattern_of({"w": torch.tensor([[1, 0, 0, 1]], dtype=torch.bool)}) == "2:4"
    assert pattern_of({"w": torch.ones(2, 4, dtype=torch.bool)}) == pattern_of({}) == "dense"


def test_speedups_best_backend_and_crossover():
    rows = [row(0.2, 10, 20), row(0.5, 10, 12), row(0.8, 10, 8), row(0.9, 10, 5)]
    assert ratio(rows[3], "csr", "latency_ms") == 2.0 and ratio(rows[3], "csr", "throughput") == 2.0
    assert ratio(rows[0], "bsr", "latency_ms") is None
    assert best(rows[0]) == ("dense", 1.0) and best(rows[3]) == ("csr", 2.0)
    assert crossover(rows, "csr", "latency_ms") == 0.8
    assert crossover([row(0.5, 10, 8), row(0.9, 10, 12)], "csr", "latency_ms") is None  # slower at the top


@pytest.fixture(scope="module")
def structured_run(tiny_model_path, data_root, tmp_path_factory):
    """One `structured` run at 0.5 on tiny CSQA (weights kept), shared by the tests below."""
    from smcbench.runner.single import execute

    out = tmp_path_factory.mktemp("structured")
    [record] = execute(csqa_request(tiny_model_path, data_root, out, "structured", [0.5]))
    return out, record, str(data_root)  # a run's identity leaves its data folder out: the tests give it


def test_shrink_command_writes_a_smaller_model_with_the_runs_outputs(structured_run, tmp_path):
    from typer.testing import CliRunner

    from smcbench.cli import app
    from smcbench.inference.measure import masked_model, task_for
    from smcbench.sparsity import read_masks
    from smcbench.sparsity.structured import counts, removed
    from smcbench.structure import load_shrunk, units

    _, r, data = structured_run
    masks = read_masks(f"{r['dir']}/masks.safetensors")
    task = task_for({**r["config"]["task"], "data_dir": data})
    expected = masked_model(task, f"{r['dir']}/model.safetensors", masks)
    h, n = counts(0.5, 2, 4 * 16 * 8, 32, 2 * 16)  # the tiny model: 2 heads of 8, 32 neurons per layer
    gone = removed(units(expected), masks)
    assert sum(u.kind == "head" for u in gone) == 2 * h and sum(u.kind == "neuron" for u in gone) == 2 * n
    result = CliRunner().invoke(app, ["shrink", r["dir"], "--out", str(tmp_path / "small"), "--data-dir", data])
    assert result.exit_code == 0, result.output
    small = load_shrunk(tmp_path / "small")
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in expected.parameters())
    batch = task.collate(list(task.inference_examples())[:3])
    torch.testing.assert_close(task.inference_forward(small, batch), task.inference_forward(expected, batch),
                               atol=1e-5, rtol=1e-5)
    again = CliRunner().invoke(app, ["shrink", r["dir"], "--out", str(tmp_path / "small"), "--data-dir", data])
    assert again.exit_code != 0 and "not empty" in again.output


def test_bench_inference_on_a_grids_runs_and_the_report_section(structured_run):
    from smcbench.bench import inference
    from smcbench.report.render import build

    out, _, data = structured_run
    job = {"examples": 2, "serving_batch": 2, "serving_examples": 4, "reps": 1, "threads": 1}
    result = inference.run(out, {"data_dir": data}, [], [], ["dense", "csr", "bsr", "shrunk"],
                           job, None, lambda _: None,
                           isolated=False)  # the plumbing; one test of a fresh worker process is below
    rows = {r["method"]: r for r in json.loads((out / "inference.json").read_text())["rows"]}
    assert set(rows) == {"dense", "structured"} and rows["structured"]["weights"] == "run"
    assert rows["structured"]["pattern"] == "structured"
    assert rows["structured"]["backends"]["csr"]["status"] == "ok"
    assert rows["structured"]["backends"]["csr"]["max_abs_diff"] <= 1e-4
    assert rows["structured"]["backends"]["bsr"]["status"].startswith("not measured")
    assert rows["structured"]["backends"]["shrunk"]["status"] == "ok"
    assert rows["structured"]["backends"]["shrunk"]["max_abs_diff"] <= 1e-4
    assert list(rows["dense"]["backends"]) == ["dense"]
    assert "crossover csr" in inference.render(result)
    build(out / "results.db", out / "report")
    md = (out / "report" / "report.md").read_text()
    section = md.split("## What the sparsity buys: commonsense/csqa")[1].split("\n## ")[0]
    assert "| structured | 0." in section and "fastest backend" in section and "- csr, structured models:" in section
    assert (out / "report" / "speed-commonsense-csqa-tiny-bert.png").is_file()


def test_every_backend_is_registered_with_a_summary():
    assert {"dense", "csr", "bsr", "2:4", "deepsparse", "shrunk"} <= set(BACKENDS)
    assert all(b.summary for b in BACKENDS.values())


def test_a_measurement_runs_in_a_fresh_worker_process(structured_run):
    from smcbench.inference.measure import Job, measure

    _, r, data = structured_run
    result = measure(Job(spec={**r["config"]["task"], "data_dir": data}, masks=f"{r['dir']}/masks.safetensors",
                         backend="shrunk",
                         weights=f"{r['dir']}/model.safetensors", examples=1, serving_batch=2, serving_examples=2,
                         reps=1, threads=1))
    assert result["status"] == "ok" and result["max_abs_diff"] <= 1e-4 and "memory_mb" in result
