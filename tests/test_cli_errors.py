"""The bad-input catalogue: every command refuses bad values before any work, in one line on stderr that names the
option, with exit status 2, and leaves nothing behind."""

import sys

import pytest
import yaml

from smcbench.cli import main


def spec_file(tmp_path, name, **changes):
    spec = {"tasks": [{"task": "commonsense/csqa"}], "methods": ["gmp"], "sparsities": [0.5], **changes}
    path = tmp_path / f"{name}.yaml"  # beside the working folder, which must stay empty
    path.write_text(yaml.safe_dump(spec))
    return str(path)


BAD_YAML = "tasks: [commonsense/csqa\n"

# (arguments, a fragment the one error line must contain). `{spec:NAME}` is a spec file made by spec_file.
CATALOGUE = [
    # run
    (["run"], "Missing argument 'task'"),
    (["run", "nosuch/task"], "unknown task 'nosuch/task'"),
    (["run", "commonsense/csqa", "--method", "nosuch"], "unknown method 'nosuch'"),
    (["run", "commonsense/csqa", "--lr", "-1"], "--lr: Input should be greater than 0"),
    (["run", "commonsense/csqa", "--lr", "fast"], "--lr"),
    (["run", "commonsense/csqa", "--batch-size", "0"], "--batch-size"),
    (["run", "commonsense/csqa", "--max-length", "x"], "--max-length"),
    (["run", "commonsense/csqa", "--warmup-ratio", "2"], "--warmup-ratio"),
    (["run", "commonsense/csqa", "--train-size", "0"], "--train-size"),
    (["run", "commonsense/csqa", "--sparsity", "1.2"], "--sparsity 1.2: must be in [0, 1)"),
    (["run", "commonsense/csqa", "--sparsity", "abc"], "--sparsity 'abc'"),
    (["run", "commonsense/csqa", "--method", "gmp", "--interval", "0"], "--interval"),
    (["run", "commonsense/csqa", "--method", "gmp", "--gmp-start", "1.5"], "--gmp-start"),
    (["run", "commonsense/csqa", "--method", "omp_after", "--pattern", "2:1"], "pattern"),
    (["run", "commonsense/csqa", "--method", "gmp", "--snip-batches", "2"], "snip_batches"),
    (["run", "commonsense/csqa", "--keep-weights", "some"], "--keep-weights: unknown policy 'some'"),
    (["run", "commonsense/csqa", "--log", "tensorboard"], "--log: unknown tracker 'tensorboard'"),
    (["run", "commonsense/csqa", "--option", "novalue"], "--option 'novalue'"),
    (["run", "commonsense/winogrande", "--option", "train_variant=huge"], "--option train_variant: Input should be"),
    (["run", "commonsense/csqa", "--bogus", "1"], "No such option: --bogus"),
    # grid
    (["grid", "nosuch"], "no spec file 'nosuch'"),
    (["grid", "demo", "--workers", "0"], "--workers"),
    (["grid", "demo", "--executor", "slurm"], "--executor: unknown executor 'slurm'"),
    (["grid", "demo", "--keep-weights", "x"], "--keep-weights: unknown policy 'x'"),
    (["grid", "demo", "--log", "x"], "--log: unknown tracker 'x'"),
    (["grid", "demo", "--cpus-per-run", "0"], "--cpus-per-run"),
    (["grid", "{spec:bad-yaml}"], "not valid YAML"),
    (["grid", "{spec:unknown-key}"], "colour"),
    (["grid", "{spec:level}"], "sparsity 1.5 is not in (0, 1)"),
    (["grid", "{spec:lr}"], "train.lr"),
    (["grid", "{spec:method}"], "unknown method 'nosuch'"),
    (["grid", "{spec:keep}"], "keep_weights"),
    (["grid", "paper-all", "--part", "chemistry"], "--part 'chemistry': paper-all has the parts"),
    (["grid", "demo", "--part", "protein"], "--part: demo includes no other specs"),
    # report
    (["report", "--out", "nonexistent"], "--out 'nonexistent': no such folder"),
    (["report", "--levels", "2"], "--levels 2.0: must be in [0, 1)"),
    (["report", "--verdict", "vibes"], "--verdict 'vibes': choose paired or paper"),
    (["report", "--out", "."], "--out '.': no results.db in it or its subfolders, and no finished run"),
    (["report", "--out", ".", "--csv", "nodir/x.csv"], "--csv 'nodir/x.csv': its folder does not exist"),
    # prune, layerwise
    (["prune"], "Missing option '--sparsity'"),
    (["prune", "--sparsity", "1.5"], "--sparsity"),
    (["prune", "--sparsity", "0.5", "--allocation", "foo"], "--allocation 'foo'"),
    (["prune", "--sparsity", "0.5", "--preset", "foo"], "--preset 'foo'"),
    (["prune", "--sparsity", "0.5", "--score", "snip"], "--score 'snip'"),
    (["prune", "--sparsity", "0.5", "--masks-out", "nodir/m.safetensors"], "--masks-out 'nodir/m.safetensors'"),
    (["prune", "--sparsity", "0.5", "--model", "./no-model-here"], "no model folder at './no-model-here'"),
    (["layerwise", "--sparsity", "1"], "--sparsity: 1.0 is not a sparsity in [0, 1)"),
    # pretrain, convert-tape, demo
    (["pretrain", "nosuch"], "cannot pretrain 'nosuch'"),
    (["pretrain", "esm-tiny", "--steps", "-1"], "--steps"),
    (["pretrain", "esm-tiny", "--max-length", "2"], "--max-length"),
    (["pretrain", "esm-tiny", "--exclude-folds", "a"], "--exclude-folds 'a'"),
    (["convert-tape", "no-such.bin", "--out", "x"], "no TAPE checkpoint at 'no-such.bin'"),
    (["demo", "--workers", "0"], "--workers"),
    # bench
    (["bench", "nosuch"], "No such command 'nosuch'"),
    (["bench", "threshold", "--methods", "foo"], "--methods: unknown method(s) ['foo']"),
    (["bench", "threshold", "--layers", "0"], "--layers"),
    (["bench", "overhead", "--steps", "0"], "--steps"),
    (["bench", "overhead", "--sparsity", "1"], "--sparsity"),
    (["bench", "overhead", "--kinds", "dense,gmp"], "--kinds"),
    (["bench", "loop", "--batch-size", "0"], "--batch-size"),
    (["bench", "loop", "--train-size", "abc"], "--train-size"),
    (["bench", "arithmetic", "--fold", "7"], "--fold"),
    (["bench", "arithmetic", "--lr", "0"], "--lr: must be > 0"),
    (["bench", "protein", "--fold", "12"], "--fold"),
    (["bench", "protein", "--epochs", "0"], "--epochs"),
    (["bench", "translation", "--beam", "0"], "--beam"),
    (["bench", "translation", "--steps", "0"], "--steps"),
    (["bench", "second-order", "--block", "0"], "--block"),
    (["bench", "second-order", "--gradients", "-3"], "--gradients"),
    (["bench", "report", "--rows", "0"], "--rows"),
    (["bench", "optimizer", "--steps", "0"], "--steps"),
    (["bench", "inference", "--levels", "2"], "--levels"),
    (["bench", "inference", "--structured", "half"], "--structured"),
    (["bench", "inference", "--runs", "nowhere"], "--runs 'nowhere': no such folder"),
    (["bench", "inference", "--backend", "nosuch"], "--backend 'nosuch'"),
    # shrink
    (["shrink", "nowhere", "--out", "small"], "no config.json, masks.safetensors, model.safetensors"),
    # versus
    (["versus", "gmp"], "Missing argument 'b'"),
    (["versus", "gmp", "obert", "--out", "nowhere"], "--out 'nowhere': no results.db there"),
]

SPECS = {
    "unknown-key": {"colour": "red"},
    "level": {"sparsities": [1.5]},
    "lr": {"train": {"lr": -1}},
    "method": {"methods": ["nosuch"]},
    "keep": {"keep_weights": "some"},
}


def test_the_catalogue_covers_every_command():
    from smcbench.cli import app, bench_app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands} - {"bench"}
    benches = {c.name for c in bench_app.registered_commands}
    covered = {args[0] for args, _ in CATALOGUE}
    covered_bench = {args[1] for args, _ in CATALOGUE if args[0] == "bench"}
    assert commands <= covered, commands - covered
    assert benches <= covered_bench, benches - covered_bench


@pytest.mark.parametrize(("args", "fragment"), CATALOGUE, ids=[" ".join(a) for a, _ in CATALOGUE])
def test_bad_input_is_one_line_naming_the_option(args, fragment, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolved = []
    for a in args:
        if a.startswith("{spec:"):
            name = a[6:-1]
            if name == "bad-yaml":
                path = tmp_path / "bad.yaml"
                path.write_text(BAD_YAML)
                a = str(path)
            else:
                a = spec_file(tmp_path, name, out=str(work / "runs"), **SPECS[name])
        resolved.append(a)
    monkeypatch.setattr(sys, "argv", ["smc-bench", *resolved])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("smc-bench: error: ") and fragment in lines[0], lines[0]
    assert list(work.iterdir()) == []  # nothing written, nothing half-written
