import json
import os
import subprocess
import sys

import pytest
from safetensors import safe_open

from helpers import run_cli, tiny_bert_config
from smcbench.bench import threshold

CLI = [sys.executable, "-c", "from smcbench.cli import main; main()"]


def run(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, check=False)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from transformers import BertForMultipleChoice

    path = tmp_path_factory.mktemp("tiny") / "model"
    BertForMultipleChoice(tiny_bert_config()).save_pretrained(path)
    return path


def test_prune_writes_masks_and_reports_exact_sparsity(tiny_model_dir, tmp_path, monkeypatch, capsys):
    code, said, err = run_cli(monkeypatch, capsys, "prune", "--model", str(tiny_model_dir), "--sparsity", "0.36",
                              "--json", "--masks-out", str(tmp_path / "m.safetensors"))
    assert code == 0, err
    report = json.loads(said)
    total = sum(r["numel"] for r in report["layers"])
    assert sum(r["pruned"] for r in report["layers"]) == round(0.36 * total)
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert set(f.keys()) == {r["name"] for r in report["layers"]}


def test_bad_input_is_one_error_line_and_a_nonzero_exit_from_the_installed_command(tiny_model_dir, tmp_path):
    # The installed entry point, in its own process (tests/test_cli_errors.py runs the catalogue in-process).
    out = run("prune", "--model", str(tiny_model_dir), "--sparsity", "0.5", "--allocation", "nope",
              "--masks-out", str(tmp_path / "m.safetensors"))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--allocation 'nope'" in lines[0]
    assert not list(tmp_path.iterdir())  # nothing written


def test_unknown_model_is_one_error_line(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(monkeypatch, capsys, "prune", "--model", "no-such-model", "--sparsity", "0.5")
    assert code == 2
    assert err.strip().splitlines() == [err.strip()]
    assert "unknown model 'no-such-model'" in err


def test_bench_threshold_json_has_every_key_and_the_engine_is_exact(monkeypatch, capsys):
    # Two of its methods (each runs in its own process): the engine and the anchor it is compared with.
    code, said, err = run_cli(monkeypatch, capsys, "bench", "threshold", "--json", "--layers", "1", "--hidden", "32",
                              "--vocab", "300", "--methods", "engine,concat_topk")
    assert code == 0, err
    figures = json.loads(said)
    assert set(figures) >= {"engine_s", "engine_extra_mb", "engine_exact", "concat_topk_s", "concat_topk_extra_mb",
                            "params"}
    assert "torch_prune_s" not in figures and "floor_s" not in figures  # only what was asked
    assert figures["engine_exact"] is True
    assert figures["params"] == sum(a * b for a, b in threshold.shapes(1, 32, 300))
