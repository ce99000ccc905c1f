"""A method from an outside distribution (its own dist-info and `smcbench.methods` entry point, on the path of a
fresh process), run through `smc-bench run` and `smc-bench grid`; a clash and a broken plugin."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

CLI = [sys.executable, "-c", "from smcbench.cli import main; main()"]

PLUGIN = '''
"""smcbench-half-magnitude: a method and a score of another package."""
from pydantic import Field

from smcbench.methods import MaskEnforcer, Method, Outcome, register_method
from smcbench.methods.paper import OneShotSettings
from smcbench.sparsity.scores import Score, register_score


@register_score("half_magnitude")
class HalfMagnitude(Score):
    def flat(self, name, weight, index):
        return weight.detach().reshape(-1)[index].abs() / 2


class HalfSettings(OneShotSettings):
    half_retrain_steps: int = Field(2, ge=0, description="half: updates after pruning.")


@register_method
class Half(Method):
    name = "half_magnitude_after"
    settings = HalfSettings
    needs_dense = True
    summary = "a plugin: global |w|/2 on the dense fine-tune"

    def run(self, exp, sparsities):
        for s in sparsities:
            model = exp.dense_model()
            sp = exp.settings.sparsifier(model)
            sp.prune(s, HalfMagnitude(), "global")
            steps = exp.settings.half_retrain_steps
            out = exp.fine_tune(model, [MaskEnforcer(sp)], f"half@{s:.3f}", steps) if steps else exp.untrained(model)
            yield Outcome(s, model, sp, out, {"plugin": True})
'''


def install(site, name, entry, source, module="smcbench_half"):
    """A distribution as pip leaves it: the module and its dist-info with the entry point."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[smcbench.methods]\n{entry} = {module}\n")
    (info / "top_level.txt").write_text(f"{module}\n")


def cli(site, *args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, check=False, cwd=cwd)


@pytest.fixture()
def site(tmp_path):
    path = tmp_path / "site"
    path.mkdir()
    return path


def test_a_plugin_method_runs_through_run_and_grid(site, tmp_path, tiny_model_path, data_root):
    install(site, "smcbench-half", "half", PLUGIN)
    data = ["--model", str(tiny_model_path), "--data-dir", str(data_root), "--train-size", "24", "--val-size", "8",
            "--eval-size", "8", "--max-length", "32", "--batch-size", "4", "--max-steps", "4", "--lr", "1e-3"]
    out = cli(site, "run", "commonsense/csqa", "--method", "half_magnitude_after", "--sparsity", "0.5",
              "--half-retrain-steps", "1", "--out", str(tmp_path / "runs"), "--quiet", *data)
    assert out.returncode == 0, out.stderr
    [result] = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "half_magnitude_after").rglob("result.json")]
    assert result["notes"] == {"plugin": True} and result["steps"] == 1
    layers = result["layers"]
    assert sum(x["pruned"] for x in layers) == round(0.5 * sum(x["numel"] for x in layers))

    # The grid, into the same folder: the dense fine-tune is found done, the plugin's variant runs.
    spec = {"name": "plugin-grid", "out": str(tmp_path / "runs"), "data_dir": str(data_root),
            "models": [str(tiny_model_path)], "seeds": [0], "sparsities": [0.5],
            "tasks": [{"task": "commonsense/csqa", "train_size": 24, "val_size": 8, "eval_size": 8, "max_length": 32}],
            "train": {"batch_size": 4, "max_steps": 4, "lr": 1e-3},
            "methods": ["dense", {"half_magnitude_after": {"half_retrain_steps": 0}}]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    ran = cli(site, "grid", str(tmp_path / "spec.yaml"))
    assert ran.returncode == 0, ran.stderr
    assert "plugin-grid: 1 ran, 1 already done, 0 failed" in ran.stdout
    assert "half_magnitude_after (half_retrain_steps=0) @ 0.500: accuracy" in ran.stdout


@pytest.fixture()
def entry_point(site, monkeypatch):
    """Install a plugin distribution on this process's path and make load_plugins see only its entry point;
    the registries are restored afterwards."""
    import importlib.metadata

    from smcbench.methods import METHODS, PLUGIN_CLASH
    from smcbench.methods.base import PLUGIN_ERRORS
    from smcbench.sparsity.scores import SCORES

    monkeypatch.syspath_prepend(str(site))
    saved = dict(METHODS), dict(SCORES)

    def add(name, entry, source, module):
        install(site, name, entry, source, module=module)
        [dist] = [d for d in importlib.metadata.distributions(path=[str(site)]) if d.metadata["Name"] == name]
        monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: dist.entry_points.select(group=group))

    yield add
    METHODS.clear()
    METHODS.update(saved[0])
    SCORES.clear()
    SCORES.update(saved[1])
    PLUGIN_ERRORS.clear()
    PLUGIN_CLASH.clear()


def test_a_method_name_clash_is_one_error_naming_both(entry_point):
    from smcbench.errors import SmcBenchError
    from smcbench.methods import METHODS, load_plugins

    gmp = METHODS["gmp"]
    entry_point("smcbench-clash", "clash", textwrap.dedent('''
        from smcbench.methods import register_method
        from smcbench.methods.paper import OneShotAfter

        @register_method
        class Mine(OneShotAfter):
            name = "gmp"
            def run(self, exp, sparsities):
                return iter(())
        '''), module="smcbench_clash")
    with pytest.raises(SmcBenchError) as err:
        load_plugins()
    assert str(err.value) == ("method 'gmp' of smcbench_clash (smcbench-clash) clashes with the method of that name "
                              "in smcbench.methods.paper (smc-bench): rename one of them")
    assert METHODS["gmp"] is gmp  # the built-in stays


def test_a_setting_clash_is_one_error_naming_both(entry_point):
    from smcbench.errors import SmcBenchError
    from smcbench.methods import METHODS, load_plugins

    entry_point("smcbench-badsetting", "bad", textwrap.dedent('''
        from smcbench.methods import register_method
        from smcbench.methods.paper import OneShotAfter, OneShotSettings

        class S(OneShotSettings):
            interval: str = "often"

        @register_method
        class Mine(OneShotAfter):
            name = "mine"
            settings = S
        '''), module="smcbench_badsetting")
    with pytest.raises(SmcBenchError, match=r"setting 'interval' of method 'mine' \(smcbench_badsetting "
                       r"\(smcbench-badsetting\)\) differs from the setting of that name of method"):
        load_plugins()
    assert "mine" not in METHODS


def test_a_broken_plugin_is_reported_and_the_rest_works(entry_point, capsys):
    from smcbench.methods import METHODS, load_plugins

    before = set(METHODS)
    entry_point("smcbench-broken", "broken", "raise ImportError('needs a library that is missing')\n",
                module="smcbench_broken")
    [error] = load_plugins()
    assert error.startswith("plugin 'broken' (smcbench-broken, smcbench_broken) failed to load and is skipped: "
                            "ImportError: needs a library that is missing")
    assert capsys.readouterr().err.strip() == f"smc-bench: warning: {error}"
    assert set(METHODS) == before


def test_the_cli_says_a_clash_in_one_line(site):
    # Through the command: the clash found while importing is said by main() as one error line, exit status 2.
    install(site, "smcbench-clash", "clash", "from smcbench.methods import register_method\n"
            "from smcbench.methods.paper import OneShotAfter\n\n\n@register_method\nclass Mine(OneShotAfter):\n"
            "    name = 'snip'\n", module="smcbench_clash")
    out = cli(site, "grid", "demo", "--dry-run", "--no-measure")
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("smc-bench: error: method 'snip' of smcbench_clash (smcbench-clash) clashes")
