"""The `smc-bench` command line: thin wrappers over the library."""

from __future__ import annotations

import inspect
import json
import os
import sys
from pathlib import Path

import typer

from smcbench.errors import SmcBenchError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Benchmark sparse neural network algorithms.",
)
bench_app = typer.Typer(no_args_is_help=True, help="Performance benchmarks: figures and ratios, not tests.")
app.add_typer(bench_app, name="bench")


def fail(message: str, status: int = 2) -> None:
    """One line on stderr and a non-zero exit, never a traceback: status 2 for bad input (a usage error), 1 for a
    failure while working (a disk that fills, a file that vanished)."""
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    typer.echo(f"smc-bench: {'error' if status == 2 else 'failed'}: {first}", err=True)
    sys.exit(status)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Output folder."),
    workers: int = typer.Option(1, min=1, help="Local worker processes."),
    data_dir: str | None = typer.Option(None, help="Data folder (default: ../shared/data)."),
) -> None:
    """The demo: the `demo` grid preset (MiniLM on a CSQA subset, a few methods and levels), then the report."""
    import time

    from smcbench.report.render import build
    from smcbench.runner.grid import expand, run_local
    from smcbench.runner.migrate import migrate
    from smcbench.runner.spec import load_spec

    start = time.perf_counter()
    spec = load_spec("demo")
    if data_dir:
        spec = spec.model_copy(update={"data_dir": data_dir})
    migrate(out, typer.echo)
    nodes = expand(spec, out)
    typer.echo(f"demo: {len(nodes)} runs ({sum(n.done() for n in nodes)} already done) under {out}")
    status = run_local(nodes, workers, print_progress)
    failed = [n for n in nodes if not status[n.id].startswith(("done", "ran"))]
    if failed:
        fail(f"{len(failed)} run(s) failed, first: {failed[0].label}: {status[failed[0].id]}")
    path = build(out / "results.db", out / "report")
    # What a first reader needs: the cross-task verdicts, the findings, each task's curve table and failing levels.
    shown = ("Across tasks", "The paper's findings", "Accuracy:", "Failing sparsity")  # section titles' starts
    sections = (out / "report" / "report.md").read_text().split("\n## ")[1:]
    typer.echo("\n\n".join(f"## {s.strip()}" for s in sections if s.startswith(shown)))
    typer.echo(f"\ndemo finished in {time.perf_counter() - start:.0f} s; report: {path}")


@app.command()
def layerwise(
    model: str = typer.Option("minilm", help="Model name, hub id or local folder."),
    sparsity: float = typer.Option(0.5, min=0, max=1, help="Target sparsity, in [0, 1)."),
) -> None:
    """Prune a pretrained model with several methods and print the layerwise sparsity of each side by side."""
    check_level("--sparsity", sparsity)
    from smcbench import layerwise as layerwise_module

    typer.echo(layerwise_module.run(model, sparsity))


@app.command()
def prune(
    model: str = typer.Option("minilm", help="Model name, hub id or local folder."),
    sparsity: float = typer.Option(..., min=0, max=1, help="Fraction of selected weights to prune, "
                                   "in [0, 1)."),
    score: str = typer.Option("magnitude", help="magnitude or random (data-free scores)."),
    allocation: str = typer.Option("global", help="global, uniform, erk, or N:M such as 2:4."),
    preset: str = typer.Option("all", help="all (embeddings and heads too), encoder or esm (attention + FFN)."),
    seed: int = typer.Option(0, help="Seed of random scores."),
    masks_out: Path | None = typer.Option(None, "--masks-out", help="Write the masks here (safetensors)."),
    as_json: bool = typer.Option(False, "--json", help="Print the layerwise sparsity as JSON."),
) -> None:
    """Prune a pretrained model once and report its layerwise sparsity."""
    from smcbench.models import load_pretrained
    from smcbench.sparsity import Sparsifier, format_table, make_score
    from smcbench.sparsity.allocation import ALLOCATIONS, NM_PATTERN
    from smcbench.sparsity.report import as_records
    from smcbench.sparsity.selection import PRESETS

    check_level("--sparsity", sparsity)
    if score not in ("magnitude", "random"):
        fail(f"--score {score!r}: needs training data or is unknown; `prune` takes magnitude or random")
    if allocation not in ALLOCATIONS and not NM_PATTERN.match(allocation):
        fail(f"--allocation {allocation!r}: choose {', '.join(ALLOCATIONS)} or N:M such as 2:4")
    if preset not in PRESETS:
        fail(f"--preset {preset!r}: choose {', '.join(PRESETS)}")
    if masks_out is not None and not masks_out.parent.is_dir():
        fail(f"--masks-out {str(masks_out)!r}: its folder does not exist")
    net = load_pretrained(model)
    sp = Sparsifier(net, preset)
    sp.prune(sparsity, make_score(score, seed=seed) if score == "random" else score, allocation)
    if masks_out is not None:
        sp.save_masks(masks_out)
    if as_json:
        typer.echo(json.dumps({"overall": sp.sparsity(), "layers": as_records(sp.layers())}))
    else:
        typer.echo(format_table(sp.layers(), f"{model}: {score} / {allocation} at {sparsity}"))


def print_progress(node, status: str, seconds: float) -> None:
    """One line per finished grid run: what, how long, and its primary metric."""
    from smcbench.metrics import Metric

    if status == "ran":
        result = json.loads(node.result_path().read_text())
        metric = Metric.of(result)
        what = f"{metric.name} {metric.value(result):.3f}, sparsity {result['achieved_sparsity']:.3f}"
    else:
        what = status
    typer.echo(f"  {node.label}: {what} ({seconds:.0f} s)")


def check_level(option: str, value: float) -> None:
    if not 0 <= value < 1:
        fail(f"{option}: {value} is not a sparsity in [0, 1)")


def parse_sparsities(text: str, option: str = "--sparsity") -> list[float]:
    """`grid` (1 − 0.8^k, k = 1..10), `grid:K` (k = 1..K), or comma-separated numbers."""
    from smcbench.sparsity import imp_levels

    text = text.strip()
    if text == "grid" or text.startswith("grid:"):
        return imp_levels(int(text.split(":")[1]) if ":" in text else 10)
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"{option} {text!r}: give numbers like 0.2,0.488 or 'grid'")
    for v in values:
        if not 0.0 <= v < 1.0:
            fail(f"{option} {v}: must be in [0, 1)")
    return values


def parse_options(items: list[str] | None) -> dict[str, str]:
    """--option KEY=VALUE (repeatable): a task's own options; the task's schema converts and checks the values."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--option {item!r}: give KEY=VALUE, e.g. train_variant=m")
        out[key.strip()] = value.strip()
    return out


def _method_setting_fields() -> dict[str, type]:
    """Every setting any registered method declares (one CLI option each; the chosen method takes its own)."""
    from smcbench.methods import METHODS

    fields = {}
    for method in METHODS.values():
        for name in method.settings.user_fields():
            fields.setdefault(name, method.settings)
    return fields


def run(task: str, method: str, sparsity: str, model: str | None, data_dir: str | None, fold: int | None, seed: int,
        option: list[str] | None, out: Path, quiet: bool, log: str | None, keep_weights: str, **given) -> None:
    """Run one method of the SMC-Bench protocol on one task at one or more sparsities."""
    from smcbench.settings import SettingsError

    try:
        _run(task, method, sparsity, model, data_dir, fold, seed, option, out, quiet, log, keep_weights, **given)
    except SettingsError as err:  # name the option the user typed: its own flag, or a task's --option KEY=VALUE
        flags = set(inspect.signature(run).parameters)
        flag = f"--{err.field.replace('_', '-')}" if err.field in flags else f"--option {err.field}"
        fail(f"{flag}: {err.problem}")


def _run(task: str, method: str, sparsity: str, model: str | None, data_dir: str | None, fold: int | None,
         seed: int, option: list[str] | None, out: Path, quiet: bool, log: str | None, keep_weights: str,
         **given) -> None:
    from smcbench.methods import get_method, method_settings
    from smcbench.metrics import Metric
    from smcbench.runner.migrate import migrate
    from smcbench.runner.single import RunRequest, check_keep_weights, execute, kept_groups_note, resolve
    from smcbench.runner.tracking import check_tracker
    from smcbench.tasks import TaskSpec
    from smcbench.tasks.registry import DataSettings
    from smcbench.training import TrainConfig

    get_method(method)
    check_keep_weights(keep_weights, "--keep-weights")
    check_tracker(log, "--log")
    levels = parse_sparsities(sparsity) if sparsity else []
    data = DataSettings.validate_overrides(DataSettings.from_cli(given), "task data")
    train_given = TrainConfig.validate_overrides(TrainConfig.from_cli(given), "training")
    settings_given = {}
    for name, schema in _method_setting_fields().items():
        settings_given.update(schema.from_cli({name: given.get(name)}))
    method_settings(method, settings_given, "method settings", strict=True)  # checked before any work
    spec, train_config = resolve(
        TaskSpec(task, model, data_dir, seed=seed, fold=fold, options=parse_options(option), **data),
        train_given,
    )
    note = kept_groups_note(spec, train_given)
    if note:
        typer.echo(note, err=True)
    migrate(out, typer.echo)
    records = execute(RunRequest(spec=spec, method=method, sparsities=levels, train=train_config,
                                 settings=settings_given, out=out, progress=not quiet, keep_weights=keep_weights,
                                 log=log))
    metric = Metric.of(records[-1])
    name = metric.name[:12]
    typer.echo(f"{'method':<14} {'target':>7} {'achieved':>9} {name:>12} {'chance':>7} {'train s':>8}  run")
    for r in records:
        chance = "-" if metric.chance is None else f"{metric.chance:.3f}"
        typer.echo(f"{r['method']:<14} {r['target_sparsity']:>7.3f} {r['achieved_sparsity']:>9.4f} "
                   f"{metric.value(r):>12.4f} {chance:>7} {r['train_s']:>8.1f}  {r['dir']}")


STARTUP_ERRORS: list[str] = []


def _register_run() -> None:
    """`smc-bench run`: its options follow from the settings schemas (task data, training, every method's
    settings), so a new setting is a new option without touching this file."""
    from smcbench.methods import METHODS
    from smcbench.tasks.registry import FAMILY_MODELS, DataSettings, known_tasks
    from smcbench.training import TrainConfig

    def opt(name, default, annotation, help_text, *flags):
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                 default=typer.Option(default, *flags, help=help_text))

    methods = "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values())
    fixed = [
        inspect.Parameter("task", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str,
                          default=typer.Argument(..., help="family/dataset: " + ", ".join(known_tasks()))),
        opt("method", "dense", str, f"The method. {methods}."),
        opt("sparsity", "grid", str, "Levels: 0.2,0.488 or grid (1-0.8^k, k=1..10) or grid:K."),
        opt("model", None, str | None, "; ".join(f"{family}: {text}" for family, text in FAMILY_MODELS.items())
            + "."),
        opt("data_dir", None, str | None, "Folder holding commonsense/, arithmetic/, protein/, translation/; default: "
            "$SMCBENCH_DATA or ../shared/data."),
        opt("fold", None, int | None, "Cross-validation fold (MAWPS, ASDiv-A: 0-4; HotProtein: 0-9; "
            "default 0)."),
        opt("seed", 0, int, "Seed of the head, data order, dropout and every random choice of a method (Random "
            "masks, scratch initialisation)."),
        opt("option", None, list[str] | None, "A task's own option, KEY=VALUE (repeatable), e.g. "
            "train_variant=m for WinoGrande, tm_thresholds=50,60 for Meltome, beam=5 for translation."),
        opt("out", Path("runs"), Path, "Output folder."),
        opt("quiet", False, bool, "No progress bars."),
        opt("log", None, str | None, "Also send each finished run's config and metrics to an experiment tracker: "
            "mlflow ($MLFLOW_TRACKING_URI, else a local store at OUT/mlruns) or wandb."),
        opt("keep_weights", "needed", str, "Which runs keep their model weights: needed (the dense fine-tune and a "
            "chain's latest round, which later runs start from), all, or none. Masks, config and metrics are always "
            "kept."),
    ]
    generated = [*DataSettings.cli_parameters(skip=frozenset({"options"})), *TrainConfig.cli_parameters()]
    seen = {p.name for p in fixed} | {p.name for p in generated}
    for name, schema in _method_setting_fields().items():
        if name in seen:  # said by main() as one error line (an import-time exception would be a traceback)
            from smcbench.methods.base import origin

            owners = [m.name for m in METHODS.values() if name in m.settings.user_fields()]
            STARTUP_ERRORS.append(f"setting {name!r} of method {owners[0]!r} ({origin(schema)}) is already an "
                                  f"option of `smc-bench run` (task data, training or the run itself): rename it")
            continue
        [param] = [p for p in schema.cli_parameters() if p.name == name]
        seen.add(name)
        generated.append(param)
    run.__signature__ = inspect.Signature([*fixed, *generated])
    app.command(name="run")(run)


_register_run()


@app.command()
def grid(
    spec: str = typer.Argument(..., help="A YAML spec file, or a preset: " + ", ".join(
        sorted(p.stem for p in (Path(__file__).parent / "runner" / "presets").glob("*.yaml"))) + "."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the plan; run nothing."),
    workers: int = typer.Option(1, min=1, help="Local worker processes (cores are split between them)."),
    executor: str = typer.Option("local", help="local, or ray (pip install 'smc-bench[ray]')."),
    address: str | None = typer.Option(None, help="Ray cluster address (default: start a local instance)."),
    cpus_per_run: float = typer.Option(1.0, min=0, help="Ray: CPUs each run asks for."),
    gpus_per_run: float = typer.Option(0.0, min=0, help="Ray: GPUs each run asks for."),
    out: Path | None = typer.Option(None, help="Output folder (default: the spec's `out`)."),
    data_dir: str | None = typer.Option(None, help="Data folder (default: the spec's, else ../shared/data)."),
    keep_weights: str | None = typer.Option(None, help="Which runs keep their model weights: needed (the dense "
                                            "fine-tunes and a chain's latest round, which later runs start from), "
                                            "all, or none (default: the spec's keep_weights, else needed)."),
    log: str | None = typer.Option(None, help="Also send each finished run to an experiment tracker: mlflow or "
                                   "wandb (default: the spec's log, else none)."),
    part: list[str] | None = typer.Option(None, help="A spec that includes others (paper-all): run only this "
                                          "part (repeatable), e.g. --part protein."),
    measure: bool = typer.Option(True, help="--dry-run: time a few updates, a validation and an evaluation of "
                                 "each task configuration not yet measured on this machine (cached), to predict "
                                 "the grid's time; --no-measure: only what finished runs and the cache know."),
) -> None:
    """Run every missing run of a grid spec (tasks x models x methods x sparsities x seeds); skip finished ones."""
    from smcbench.runner.grid import drop_all_weights, expand, run_local, run_ray
    from smcbench.runner.migrate import migrate
    from smcbench.runner.single import check_keep_weights, kept_groups_note
    from smcbench.runner.spec import load_spec
    from smcbench.runner.tracking import check_tracker

    if cpus_per_run <= 0:
        fail(f"--cpus-per-run: must be > 0 (got {cpus_per_run})")
    if executor not in ("local", "ray"):
        fail(f"--executor: unknown executor {executor!r}: choose local or ray")
    grid_spec = load_spec(spec)
    if part and not grid_spec.include:
        fail(f"--part: {grid_spec.name} includes no other specs (paper-all does)")
    if keep_weights is not None:
        check_keep_weights(keep_weights, "--keep-weights")
    check_tracker(log, "--log")
    parts = grid_spec.included(part)
    plans = []
    for name, one in parts:  # each part with its own out and retention, unless the command line says otherwise
        if data_dir:
            one = one.model_copy(update={"data_dir": data_dir})
        migrate(out or Path(one.out), typer.echo)  # older runs are found where they now belong
        label = f"{name} ({one.name})" if grid_spec.include else name
        plans.append((label, expand(one, out, keep_weights or one.keep_weights, log), keep_weights or one.keep_weights))
        notes = {kept_groups_note(n.request.spec, one.overrides()) for n in plans[-1][1]} - {""}
        for note in sorted(notes):
            typer.echo(note, err=True)
    nodes = [n for _, part_nodes, _ in plans for n in part_nodes]
    policy = keep_weights or grid_spec.keep_weights
    if dry_run:
        seconds = [print_plan(name, part_nodes, part_policy, workers, measure)
                   for name, part_nodes, part_policy in plans]
        if len(plans) > 1:
            print_total(grid_spec.name, plans, sum(seconds), workers)
        return
    from datetime import UTC, datetime

    from smcbench.runner.timing import predict, save_predictions

    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:  # checked when the grid ends; never a reason not to run it
        estimates = predict(nodes, lambda _: None, measure_missing=False)
        save_predictions(nodes, estimates)
        unknown = sum(len(n.configs()) for n in nodes if not n.done() and estimates[n.id].source == "unknown")
        if unknown:  # a grid never probes (minutes): without the dry run's cached costs its time goes unchecked
            typer.echo(f"(no time predicted for {unknown} of the runs to do: no cost measured on this machine yet; "
                       "the same command with --dry-run measures it once, so that a grid can check its time when it "
                       "ends)", err=True)
    except (SmcBenchError, OSError, ValueError) as err:
        typer.echo(f"(no time predictions recorded: {str(err).splitlines()[0][:200]})", err=True)
    if executor == "ray":
        status = run_ray(nodes, address, cpus_per_run, gpus_per_run, print_progress)
    else:
        status = run_local(nodes, workers, print_progress)
    if policy == "none":
        freed = drop_all_weights(nodes)
        typer.echo(f"--keep-weights none: {freed / 1e6:.0f} MB of model weights deleted")
    failed = {k: v for k, v in status.items() if not v.startswith(("done", "ran"))}
    typer.echo(f"{grid_spec.name}: {sum(v == 'ran' for v in status.values())} ran, "
               f"{sum(v == 'done' for v in status.values())} already done, {len(failed)} failed or skipped")
    for node in nodes:
        if node.id in failed:
            typer.echo(f"  {node.label}: {failed[node.id]}", err=True)
    print_time_check({n.request.out for n in nodes}, started)
    outs = sorted({n.request.out for n in nodes})
    if outs:  # parts side by side (the laptop track's) make one report from their common folder
        parents = {o.parent for o in outs}
        where = outs[:1] if len(outs) == 1 else [parents.pop()] if len(parents) == 1 else outs
        typer.echo("report: " + "; ".join(f"smc-bench report --out {o}" for o in where))
    if failed:
        sys.exit(1)


def print_time_check(outs: set[Path], since: str) -> None:
    """After a grid: what the dry run's figures predicted for the runs that ran, against what they took (sums
    over the runs: with several workers, more than the wall time)."""
    from smcbench.runner.store import ResultStore
    from smcbench.runner.timing import against_runs, human_time

    rows = [row for out in sorted(outs) if (out / "results.db").is_file()
            for row in against_runs(out, ResultStore(out / "results.db").records(), since)]
    if rows:
        predicted, took = sum(r["predicted_s"] for r in rows), sum(r["took_s"] for r in rows)
        runs = sum(r["runs"] for r in rows)
        typer.echo(f"time: the {runs} runs that ran were predicted {human_time(predicted)} and took "
                   f"{human_time(took)} ({took / predicted - 1:+.0%}; runner.timing)")


def print_total(name: str, plans: list, seconds: float, workers: int) -> None:
    """The dry run of a spec that includes others: the totals over its parts."""
    from smcbench.runner.disk import estimate, human
    from smcbench.runner.timing import human_time

    runs = sum(len(nodes) for _, nodes, _ in plans)
    done = sum(n.done() for _, nodes, _ in plans for n in nodes)
    disk = sum(d.total for _, nodes, policy in plans for d in estimate(nodes, policy).values())
    everything = sum(d.total for _, nodes, _ in plans for d in estimate(nodes, "all").values())
    typer.echo(f"{name}, all {len(plans)} parts: {runs} runs, {done} done, {runs - done} to run; disk "
               f"≈ {human(disk)} (every run keeping its weights: ≈ {human(everything)}); time ≈ "
               f"{human_time(seconds / workers)}{_workers_note(workers)}")


def _workers_note(workers: int) -> str:
    return "" if workers == 1 else f" with {workers} workers if they divide the runs evenly"


def print_plan(name: str, nodes: list, policy: str, workers: int = 1, measure: bool = True) -> float:
    """The dry run: each run, whether it is done, what it waits for, the disk it will use and the time it will
    take on this machine (runner.timing); the totals. Returns the seconds still to run."""
    from smcbench.runner.disk import estimate, human
    from smcbench.runner.timing import human_time, predict

    disk = estimate(nodes, policy)
    times = predict(nodes, typer.echo, measure)
    done = sum(n.done() for n in nodes)
    typer.echo(f"{name}: {len(nodes)} runs, {done} done, {len(nodes) - done} to run")
    for n in nodes:
        deps = f"  after {', '.join(d[:8] for d in n.deps)}" if n.deps else ""
        d = disk[n.id]
        size = human(d.total) + (f" (weights {human(d.weights)})" if d.weights else "")
        took = "" if n.done() else f"  ~{human_time(times[n.id].seconds)}"
        typer.echo(f"  {'done' if n.done() else 'todo'}  {n.id[:8]}  {n.label}  {'≈' if d.approximate else ''}"
                   f"{size}{took}{deps}")
    totals = {k: sum(getattr(d, k) for d in disk.values()) for k in ("masks", "weights", "records")}
    approx = "≈ " if any(d.approximate for d in disk.values()) else ""
    kept = sum(1 for d in disk.values() if d.weights)
    all_weights = estimate(nodes, "all")
    typer.echo(f"disk ({'--keep-weights ' + policy}): {approx}{human(sum(totals.values()))} in all: masks "
               f"{human(totals['masks'])}, model weights {human(totals['weights'])} ({kept} of {len(nodes)} runs "
               f"keep them), configs and results {human(totals['records'])}; every run keeping its weights (all): "
               f"{approx}{human(sum(d.total for d in all_weights.values()))}")
    if approx:
        typer.echo("≈: a model that cannot be built here is sized from its published parameter count (fp32)")
    todo = [times[n.id] for n in nodes if not n.done()]
    known = [t for t in todo if t.source != "unknown"]
    seconds = sum(t.seconds for t in known)
    from_runs = sum(t.source == "runs" for t in todo)
    unknown = f"; {len(todo) - len(known)} unknown" if len(known) < len(todo) else ""
    typer.echo(f"time on this machine: ≈ {human_time(seconds / workers)}{_workers_note(workers)} ({from_runs} of "
               f"{len(todo)} runs to go timed from finished runs of their kind, {len(known) - from_runs} from a "
               f"probe of their task{unknown}: runner.timing)")
    return seconds


@app.command()
def versus(
    a: str = typer.Argument(..., help="Method A (or a variant's name as the report writes it), in dense's place."),
    b: str = typer.Argument(..., help="Method B: the difference is B − A."),
    out: Path = typer.Option(Path("runs"), help="The runs folder (holds results.db), or a folder of them (a "
                             "track's parts: one report across them)."),
) -> None:
    """B against A at every level both ran: the paired test on their answers to the same test examples."""
    from smcbench.report.versus import versus as compare_methods
    from smcbench.runner.store import ResultStore

    if not (out / "results.db").is_file():
        fail(f"--out {str(out)!r}: no results.db there: give the folder a run or grid wrote")
    rows = compare_methods(ResultStore(out / "results.db").records(), a, b)
    if not rows:
        fail(f"{a!r} and {b!r} share no level with per-example outcomes in {out}", status=1)
    typer.echo(f"{b} − {a}: paired bootstrap on the same test examples, 95 % interval, two-sided p")
    typer.echo(f"{'task / model':<42} {'level':>6} {'A':>7} {'B':>7} {'B − A':>8}  {'interval':<18} {'p':>7}  "
               "A only / B only right")
    for r in rows:
        lv = r.level
        split = f"{lv.lost} / {lv.gained}" if lv.kind == "binary" else "-"
        typer.echo(f"{r.task + ' / ' + Path(r.model).name:<42} {r.sparsity:>6.3f} {r.a:>7.3f} {r.b:>7.3f} "
                   f"{lv.delta:>+8.3f}  [{lv.low:+.3f}, {lv.high:+.3f}]  {r.p_two_sided:>7.4f}  {split}")


@app.command()
def report(
    out: Path = typer.Option(Path("runs"), help="The runs folder (holds results.db), or a folder of them (a "
                             "track's parts: one report across them)."),
    report_dir: Path | None = typer.Option(None, "--to", help="Where to write the report (default: OUT/report)."),
    levels: str = typer.Option("", help="Sparsities for the layerwise figures (default: the middle level)."),
    csv_out: Path | None = typer.Option(None, "--csv", help="Also export the results as CSV here."),
    parquet_out: Path | None = typer.Option(None, "--parquet", help="Also export the results as Parquet here."),
    verdict: str = typer.Option("paired", help="How a failing sparsity is decided: paired (a paired bootstrap on "
                                "the per-example outcomes, Holm-corrected across each method's levels) or paper "
                                "(the paper's rule: mean below dense by the dense seeds' spread)."),
) -> None:
    """Curves, failing sparsity, layerwise sparsity and lazy-regime diagnostics, as HTML + Markdown + PNG. A folder
    of run folders (a track's parts: `--out runs/laptop`) gets one report across them."""
    from smcbench.report.render import build
    from smcbench.runner.migrate import migrate
    from smcbench.runner.store import ResultStore, export_csv, export_parquet

    chosen = parse_sparsities(levels, "--levels") if levels else None
    if verdict not in ("paired", "paper"):
        fail(f"--verdict {verdict!r}: choose paired or paper")
    if not out.is_dir():
        fail(f"--out {str(out)!r}: no such folder: give the folder a run or grid wrote (it holds results.db)")
    for option, path in (("--csv", csv_out), ("--parquet", parquet_out)):
        if path is not None and not path.parent.is_dir():
            fail(f"{option} {str(path)!r}: its folder does not exist")
    folders = [out] if (out / "results.db").is_file() else sorted(
        p for p in out.iterdir() if p.is_dir() and (p / "results.db").is_file())
    if not folders:
        if next(out.rglob("result.json"), None) is None:  # before anything is written into a wrong folder
            fail(f"--out {str(out)!r}: no results.db in it or its subfolders, and no finished run: give the folder "
                 "a run or grid wrote, or a folder of them")
        folders = [out]  # finished runs without their database: the rescan below rebuilds it
    elif folders[0] != out:
        typer.echo(f"one report across {len(folders)} run folders: {', '.join(p.name for p in folders)}")
    stores = []
    for folder in folders:
        migrate(folder, typer.echo)
        store = ResultStore(folder / "results.db")
        added = store.rescan(folder)  # runs finished by older versions or lost rows: the folders are the truth
        if added:
            typer.echo(f"added {added} finished run(s) found in {folder} to the database")
        stores.append(store)
    extra = None
    if csv_out is not None or parquet_out is not None:  # each run's row carries its verdict, interval and rule
        from smcbench.report.render import judge_all
        from smcbench.report.verdicts import export_columns

        records = [r for store in stores for r in store.records()]
        extra = export_columns(judge_all(records, verdict), records)
    if csv_out is not None:
        typer.echo(f"{export_csv(stores, csv_out, extra)} rows written to {csv_out}")
    if parquet_out is not None:
        typer.echo(f"{export_parquet(stores, parquet_out, extra)} rows written to {parquet_out}")
    path = build([f / "results.db" for f in folders], report_dir or out / "report", chosen, verdict)
    typer.echo(f"report: {path}")


@app.command()
def pretrain(
    model: str = typer.Argument(..., help="The model to pretrain: esm-tiny (protein) or mbart-tiny (translation)."),
    task: str | None = typer.Option(None, help="esm-tiny: the task it is for (default protein/hp-s2c2). HP-S2C2 / "
                                    "HP-S2C5 pretrain on all HotProtein sequences but the held-out folds' tests; HP-S "
                                    "and Meltome on their training split."),
    exclude_folds: str | None = typer.Option(None, help="esm-tiny: HotProtein folds whose test sequences stay out of "
                                             "the corpus (comma-separated, default 0); a run on fold K needs a model "
                                             "that held fold K out."),
    steps: int | None = typer.Option(None, min=0, help="Optimizer updates (default: the model's; 0 saves the random "
                                     "initialisation, the control that shows what pretraining adds)."),
    max_length: int | None = typer.Option(None, min=8, help="Tokens (residues) per training sequence (default: the "
                                          "model's)."),
    data_dir: str | None = typer.Option(None, help="Data folder (default: ../shared/data)."),
    option: list[str] | None = typer.Option(None, help="The task's own option, KEY=VALUE (repeatable), e.g. "
                                            "split=mixed for Meltome."),
    out: Path | None = typer.Option(None, help="Where to save it (default: the cache that --model NAME reads)."),
) -> None:
    """Pretrain a small model of a paper architecture on offline text, never on evaluation data."""
    from smcbench.pretraining import PRETRAINERS, PretrainRequest
    from smcbench.tasks import known_tasks
    from smcbench.tasks.registry import default_data_dir

    known_tasks()  # the families register their pretrainable models
    if model not in PRETRAINERS:
        fail(f"cannot pretrain {model!r}: smc-bench pretrains {', '.join(sorted(PRETRAINERS))}")
    folds = None
    if exclude_folds is not None:
        try:
            folds = tuple(sorted({int(k) for k in exclude_folds.split(",") if k.strip()}))
        except ValueError:
            fail(f"--exclude-folds {exclude_folds!r}: give fold numbers like 0 or 0,1")
    request = PretrainRequest(Path(data_dir) if data_dir else default_data_dir(), out, steps, max_length, task,
                              folds, parse_options(option))
    typer.echo(f"{model}: {PRETRAINERS[model](request)}")


@app.command()
def shrink(
    run_dir: Path = typer.Argument(..., help="A finished run's folder (config.json, masks.safetensors and "
                                   "model.safetensors: run it with --keep-weights all)."),
    out: Path = typer.Option(..., help="The folder to write: the physically smaller model."),
    data_dir: str | None = typer.Option(None, help="The run's data folder (default ../shared/data)."),
) -> None:
    """Remove the attention heads and feed-forward neurons a run pruned entirely (e.g. `structured`): a smaller
    transformers model with the same outputs, reloaded by smcbench.structure.load_shrunk."""
    import shutil

    from safetensors.torch import load_file

    from smcbench.inference.measure import masked_model, task_for
    from smcbench.runner.single import MASKS, WEIGHTS
    from smcbench.sparsity import read_masks
    from smcbench.structure import save_shrunk
    from smcbench.structure import shrink as remove_units

    missing = [f for f in ("config.json", MASKS, WEIGHTS) if not (run_dir / f).is_file()]
    if missing:
        fail(f"{str(run_dir)!r}: no {', '.join(missing)}: give a finished run's folder whose weights were kept "
             "(--keep-weights all)")
    if out.exists() and any(out.iterdir()):
        fail(f"--out {str(out)!r} exists and is not empty: give a new folder")
    config = json.loads((run_dir / "config.json").read_text())
    task = task_for({**config["task"], **({"data_dir": data_dir} if data_dir else {})})
    masks = read_masks(run_dir / MASKS)
    model = masked_model(task, str(run_dir / WEIGHTS), masks)
    if not hasattr(model, "save_pretrained"):
        fail(f"the run's model ({type(model).__name__}) is not a transformers model: shrink writes those only")
    before = sum(p.numel() for p in model.parameters())
    removed = remove_units(model, masks)
    if not removed:
        fail(f"{str(run_dir)!r}: its masks prune no whole attention head or feed-forward neuron")
    tmp = out.with_name(f".{out.name}.tmp")  # written whole, then renamed: a failure leaves no half model
    shutil.rmtree(tmp, ignore_errors=True)
    save_shrunk(model, removed, tmp)
    load_file(str(next(tmp.glob("*.safetensors"))))  # written and readable
    if out.exists():
        out.rmdir()  # empty (checked above)
    tmp.rename(out)
    after = sum(p.numel() for p in model.parameters())
    typer.echo(f"{out}: {after:,} parameters (from {before:,}; {sum(map(len, removed.values())):,} units removed)")


@app.command("convert-tape")
def convert_tape_command(
    checkpoint: Path = typer.Argument(..., help="TAPE's released pytorch_model.bin (transformer), or its folder."),
    out: Path = typer.Option(..., help="The transformers folder to write (use it as --model)."),
) -> None:
    """Convert TAPE's transformer checkpoint (tensors only) into a transformers BertModel folder."""
    from smcbench.tasks.protein.tape import convert_tape

    typer.echo(f"TAPE transformer: {convert_tape(checkpoint, out)}")


@bench_app.command("threshold")
def bench_threshold(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    methods: str = typer.Option(
        "engine,torch_prune,concat_topk,floor,read_only", help="Comma-separated subset to run."
    ),
    layers: int = typer.Option(24, min=1, help="Transformer layers (24: RoBERTa-large)."),
    hidden: int = typer.Option(1024, min=1, help="Hidden size."),
    vocab: int = typer.Option(50265, min=1, help="Embedding rows."),
) -> None:
    """Global magnitude pruning of a RoBERTa-large-shaped weight set: engine vs torch prune vs cat+topk."""
    from smcbench.bench import threshold

    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    unknown = [m for m in chosen if m not in threshold.METHODS]
    if unknown:
        fail(f"--methods: unknown method(s) {unknown}: choose from {', '.join(threshold.METHODS)}")
    out = threshold.run(chosen, layers, hidden, vocab)
    typer.echo(json.dumps(out) if as_json else threshold.render(out))


@bench_app.command("overhead")
def bench_overhead(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    model: str = typer.Option("minilm", help="Model name, hub id or local folder."),
    steps: int = typer.Option(10, min=1, help="Timed steps of each (after 2 warm-up steps)."),
    sparsity: float = typer.Option(0.5, min=0, max=1, help="Sparsity of the masked model."),
    kinds: str = typer.Option("dense,masked,variational_dropout,vd_floor,l0", "--kinds",
                              help="Comma-separated steps to time: dense, masked, variational_dropout, vd_floor "
                                   "(VD's matrix products only), l0."),
) -> None:
    """Median training-step time of each kind of step: dense, masked (GMP's), variational dropout's and its floor
    (the products any exact VD step computes), L0's."""
    from smcbench.bench import overhead

    check_level("--sparsity", sparsity)
    chosen = tuple(k.strip() for k in kinds.split(",") if k.strip())
    bad = [k for k in chosen if k not in overhead.KINDS]
    if bad or not chosen:
        fail(f"--kinds {kinds!r}: choose from {', '.join(overhead.KINDS)}")
    out = overhead.run(model, steps=steps, sparsity=sparsity, kinds=chosen)
    typer.echo(json.dumps(out) if as_json else overhead.render(out, model, steps))


@bench_app.command("loop")
def bench_loop(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    train_size: int = typer.Option(2000, min=1, help="First N CSQA training questions."),
    eval_size: int = typer.Option(600, min=1, help="First M dev questions for accuracy."),
    batch_size: int = typer.Option(8, min=1, help="Questions per step."),
    max_length: int = typer.Option(64, min=8, help="Tokens per choice."),
    data_dir: str = typer.Option(None, help="Folder holding commonsense/csqa."),
    profile: bool = typer.Option(False, "--profile", help="Instead: where our loop's step time goes."),
) -> None:
    """Our training loop vs a plain Hugging Face Trainer on the same CSQA setting: questions/s and accuracy."""
    from smcbench.bench import loop

    if profile:
        prof = loop.profile(batch_size=batch_size, max_length=max_length, data_dir=data_dir)
        typer.echo(json.dumps(prof) if as_json else loop.render_profile(prof, batch_size))
        return
    out = loop.run(train_size, eval_size, batch_size, max_length=max_length, data_dir=data_dir)
    typer.echo(json.dumps(out) if as_json else loop.render(out, train_size, eval_size, batch_size, max_length))


@bench_app.command("inference")
def bench_inference(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    runs: Path | None = typer.Option(None, help="A grid's output folder: measure its finished runs (written to "
                                     "RUNS/inference.json, which the report reads). Default: the task's pretrained "
                                     "model pruned by magnitude at --levels."),
    task: str = typer.Option("commonsense/csqa", help="Task whose evaluation inputs are timed (without --runs)."),
    model: str = typer.Option(None, help="Model (without --runs; default: the task's)."),
    data_dir: str = typer.Option(None, help="Data folder (default ../shared/data; --runs: where the runs' data is)."),
    max_length: int = typer.Option(64, min=8, help="Tokens per input (without --runs; --runs: each run's)."),
    levels: str = typer.Option(",".join(f"{x:g}" for x in (0.2, 0.36, 0.488, 0.59, 0.672, 0.738, 0.79, 0.832,
                                                           0.866, 0.893)), help="Sparsities (without --runs)."),
    patterns: str = typer.Option("2:4", help="N:M patterns also measured (without --runs; empty: none)."),
    structured: str = typer.Option("0.2,0.488,0.738", help="Levels of whole heads and neurons removed by magnitude "
                                   "also measured (without --runs; empty: none)."),
    backend: list[str] | None = typer.Option(None, help="Backends (repeatable; default: all; dense always)."),
    examples: int = typer.Option(16, min=1, help="Evaluation examples timed one at a time (batch 1)."),
    serving_batch: int = typer.Option(32, min=1, help="Examples per serving batch (throughput)."),
    serving_examples: int = typer.Option(64, min=1, help="Examples in the throughput passes."),
    reps: int = typer.Option(5, min=1, help="Repetitions of every timed pass."),
    threads: int = typer.Option(os.cpu_count() or 1, min=1, help="PyTorch threads (and the engine's cores)."),
    out: Path | None = typer.Option(None, help="Also write the JSON here (--runs: default RUNS/inference.json)."),
) -> None:
    """What the sparsity buys: latency, throughput, memory and size on disk of pruned models, per backend."""
    from smcbench.bench import inference
    from smcbench.inference.backends import BACKENDS

    lists = {}
    for option, text in (("--levels", levels), ("--structured", structured)):
        try:
            lists[option] = [float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            fail(f"{option} {text!r}: give sparsities separated by commas, e.g. 0.5,0.9")
        for x in lists[option]:
            check_level(option, x)
    if runs is not None and not runs.is_dir():
        fail(f"--runs {str(runs)!r}: no such folder: give a grid's output folder")
    spec = {"task": task, "model": model, "data_dir": data_dir, "max_length": max_length}
    job = {"examples": examples, "serving_batch": serving_batch, "serving_examples": serving_examples,
           "reps": reps, "threads": threads}
    result = inference.run(runs, spec, lists["--levels"], [p for p in patterns.split(",") if p.strip()],
                           list(backend or BACKENDS), job, out, lambda line: typer.echo(line, err=True),
                           lists["--structured"])
    typer.echo(json.dumps(result) if as_json else inference.render(result))


@bench_app.command("arithmetic")
def bench_arithmetic(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    task: str = typer.Option("arithmetic/mawps", help="Arithmetic task."),
    fold: int = typer.Option(0, min=0, max=4, help="Fold (0-4)."),
    model: str = typer.Option("gts:random", help="Solver and embedder (random: as the public code offline)."),
    epochs: int = typer.Option(3, min=1, help="Epochs to time."),
    batch_size: int = typer.Option(4, min=1, help="Problems per step (the public CV setting)."),
    lr: float = typer.Option(8e-4, min=0, help="Learning rate (the public GTS default)."),
    data_dir: str = typer.Option(None, help="Folder holding arithmetic/."),
    official: str = typer.Option(None, help="SVAMP's code/gts folder, to run the public code first, same settings."),
    official_python: str = typer.Option("python", help="Interpreter with the public code's dependencies."),
    official_dataset: str = typer.Option("mawps_fold0", help="The public code's -dataset (a folder in its data/)."),
) -> None:
    """GTS seconds per epoch (training; evaluation apart) and accuracy per epoch, ours beside the public code."""
    from smcbench.bench import arithmetic

    if lr <= 0:
        fail(f"--lr: must be > 0 (got {lr})")
    out = arithmetic.run(task, fold, model, epochs, batch_size, lr, data_dir, official, official_python,
                         official_dataset)
    typer.echo(json.dumps(out) if as_json else arithmetic.render(out, task, fold, model, batch_size, lr))


def _check_dropout_rng(value: str) -> None:
    """A benchmark's --dropout-rng, checked as the training loop's setting before any subprocess starts."""
    from smcbench.training import TrainConfig

    TrainConfig.validate_overrides({"dropout_rng": value}, "train")


@bench_app.command("protein")
def bench_protein(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    models: str = typer.Option("esm-tiny,esm2-8m-random", help="Comma-separated: esm-tiny, esm2-8m-random, a "
                               "folder or hub id."),
    fold: int = typer.Option(0, min=0, max=9, help="HP-S2C2 fold."),
    epochs: int = typer.Option(1, min=1, help="Epochs to time."),
    batch_size: int = typer.Option(8, min=1, help="Sequences per step."),
    max_residues: int | None = typer.Option(None, min=8, help="Cut sequences to this length (default: the model's)."),
    data_dir: str | None = typer.Option(None, help="Folder holding protein/."),
    dropout_rng: str = typer.Option("torch", help="The training loop's dropout_rng: torch or pcg64."),
) -> None:
    """Seconds per epoch, evaluation time and peak memory of protein models on one HP-S2C2 fold."""
    from smcbench.bench import protein
    _check_dropout_rng(dropout_rng)
    chosen = tuple(m.strip() for m in models.split(",") if m.strip())
    out = protein.run(chosen, fold, epochs, batch_size, max_residues, data_dir, dropout_rng)
    typer.echo(json.dumps(out) if as_json else protein.render(out, fold, batch_size, epochs))


@bench_app.command("translation")
def bench_translation(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    model: str = typer.Option("mbart-tiny", help="mbart-tiny (pretrained here on first use), an mBART folder or "
                              "hub id."),
    steps: int = typer.Option(200, min=1, help="Training updates each side makes."),
    batch_size: int = typer.Option(32, min=1, help="Sentence pairs per update."),
    train_size: int = typer.Option(2000, min=1, help="Sentence pairs per language (Fr, Cs; both directions)."),
    eval_size: int = typer.Option(200, min=1, help="FLORES-200 sentences per direction (Fr-En, En-Fr)."),
    max_length: int = typer.Option(64, min=8, help="Tokens per sentence and the generation limit."),
    beam: int = typer.Option(4, min=1, help="Beam size."),
    data_dir: str | None = typer.Option(None, help="Folder holding translation/."),
    dropout_rng: str = typer.Option("torch", help="Our training loop's dropout_rng: torch or pcg64."),
) -> None:
    """Training tokens/s and evaluation sentences/s against a plain Seq2SeqTrainer + generate loop, BLEU beside."""
    from smcbench.bench import translation
    _check_dropout_rng(dropout_rng)
    out = translation.run(model, data_dir, steps, batch_size, train_size, eval_size, max_length, beam, dropout_rng)
    typer.echo(json.dumps(out) if as_json else translation.render(out, model, steps, batch_size, beam))


@bench_app.command("second-order")
def bench_second_order(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    model: str = typer.Option("minilm", help="A BERT-style model (folder or hub id) with a multiple-choice head."),
    gradients: int = typer.Option(1024, min=1, help="oBERT: gradients for the Fisher (the method's default m)."),
    block: int = typer.Option(50, min=1, help="oBERT: Fisher block size B."),
    calibration_batches: int = typer.Option(16, min=1, help="SparseGPT / Wanda: calibration batches."),
    batch_size: int = typer.Option(8, min=1, help="Questions per batch (5 choices each)."),
    length: int = typer.Option(64, min=8, help="Tokens per choice."),
) -> None:
    """oBERT's Fisher work against collecting its gradients, its memory; SparseGPT and Wanda against magnitude."""
    from smcbench.bench import second_order

    obert, layerwise = second_order.run(model, gradients, block, calibration_batches, batch_size, length)
    typer.echo(json.dumps([obert, layerwise]) if as_json else
               second_order.render(obert, layerwise, model, gradients, block, batch_size, length))


@bench_app.command("optimizer")
def bench_optimizer(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    model: str = typer.Option("minilm", help="Model name, hub id or local folder."),
    steps: int = typer.Option(10, min=1, help="Timed steps of each (after 2 warm-up steps)."),
) -> None:
    """AdamW's step: fused (the loop's) against foreach and per-tensor, the same parameters and gradients."""
    from smcbench.bench import optimizer

    out = optimizer.run(model, steps)
    typer.echo(json.dumps(out) if as_json else optimizer.render(out))


@bench_app.command("report")
def bench_report(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    rows: int = typer.Option(5000, min=1, help="Runs in the synthetic results database."),
) -> None:
    """Time `smc-bench report` on a synthetic database of thousands of runs (the paper grid's shape)."""
    from smcbench.bench import report as report_bench

    out = report_bench.run(rows)
    typer.echo(json.dumps(out) if as_json else report_bench.render(out))


def _click_exception() -> type[Exception]:
    """Click's base exception through typer's public API: typer.BadParameter derives from it whether typer uses
    click or (typer >= 0.20) its own copy of it, so no private module is imported."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main() -> None:
    from smcbench.methods import PLUGIN_CLASH

    if PLUGIN_CLASH or STARTUP_ERRORS:
        fail((PLUGIN_CLASH or STARTUP_ERRORS)[0])
    try:
        app(standalone_mode=False)  # usage errors come back here, to be said in one line
    except _click_exception() as err:  # a bad option value, a missing argument, an unknown option
        if type(err).__name__ == "NoArgsIsHelpError":  # `smc-bench` alone: the help, as click would show it
            err.show()
            sys.exit(err.exit_code)
        fail(err.format_message())
    except (KeyboardInterrupt, EOFError):
        sys.exit(130)
    except SmcBenchError as err:
        fail(str(err))
    except OSError as err:  # the system failed mid-work (disk full, a file gone): not a usage error
        fail(f"{err.strerror or err} ({err.filename})" if err.filename else str(err), status=1)


if __name__ == "__main__":
    main()
