"""`smc-bench report`: figures (PNG), a Markdown summary and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import itertools
import re
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from smcbench.errors import SmcBenchError  # noqa: E402
from smcbench.methods import is_sparse  # noqa: E402
from smcbench.methods.base import stage_of  # noqa: E402
from smcbench.metrics import Metric  # noqa: E402
from smcbench.report import analysis, findings, significance, speed, summary, verdicts  # noqa: E402
from smcbench.runner.single import MASKS  # noqa: E402
from smcbench.runner.store import ResultStore  # noqa: E402
from smcbench.sparsity import read_masks  # noqa: E402


def cell(text: str) -> str:
    """A Markdown table cell: a pipe in a name (a regex variant, `include=(query|key)`) is escaped, not a column."""
    return text.replace("|", "\\|")


def anchor(title: str) -> str:
    """The link target of a section (GitHub's Markdown heading ids: lower case, punctuation dropped, - for spaces)."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def short(name: str) -> str:
    for old, new in [("roberta.", ""), ("bert.", ""), ("encoder.layer.", "L"), ("attention.self.", ""),
                     ("attention.output.dense", "attn.out"), ("intermediate.dense", "ffn.in"),
                     ("output.dense", "ffn.out"), (".weight", ""), ("embeddings.", "emb.")]:
        name = name.replace(old, new)
    return name


class Report:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.figures: list[tuple[str, Path]] = []
        self.sections: list[tuple[str, str]] = []  # (title, markdown)

    def figure(self, fig, name: str, title: str) -> None:
        path = self.out / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.figures.append((title, path))

    def markdown(self) -> str:
        parts = ["# smc-bench report", "", "Contents: " + ", ".join(f"[{t}](#{anchor(t)})" for t, _ in self.sections),
                 ""]
        for title, body in self.sections:
            parts += [f"## {title}", "", body, ""]
        parts += ["## Figures", ""] + [f"![{t}]({p.name})" for t, p in self.figures]
        return "\n".join(parts) + "\n"

    def html(self) -> str:
        def table(lines: list[str]) -> str:
            rows = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
                    for line in lines if not set(line) <= set("|-: ")]
            head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
            return f"<table><tr>{head}</tr>{body}</table>"

        def block(kind: str, run: list[str]) -> str:
            if kind == "table":
                return table(run)
            if kind == "list":
                return "<ul>" + "".join(f"<li>{html.escape(x[2:])}</li>" for x in run) + "</ul>"
            return "".join(f"<p>{html.escape(x)}</p>" for x in run if x.strip())

        def blocks(md: str) -> str:
            """Tables, bulleted lists and paragraphs in the order the markdown has them."""
            out, run, kind = [], [], "prose"
            for line in md.splitlines():
                this = "table" if line.startswith("|") else "list" if line.startswith("- ") else "prose"
                if run and this != kind:
                    out.append(block(kind, run))
                    run = []
                run.append(line)
                kind = this
            return "".join(out) + (block(kind, run) if run else "")

        index = "".join(f"<li><a href='#{anchor(t)}'>{html.escape(t)}</a></li>" for t, _ in self.sections)
        sections = "".join(f"<h2 id='{anchor(t)}'>{html.escape(t)}</h2>{blocks(b)}" for t, b in self.sections)
        images = "".join(
            f"<h3>{html.escape(t)}</h3><img src='data:image/png;base64,"
            f"{base64.b64encode(p.read_bytes()).decode()}'/>" for t, p in self.figures
        )
        style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
                 "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}")
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>smc-bench report</title>"
                f"<style>{style}</style></head><body><h1>smc-bench report</h1><ul>{index}</ul>{sections}"
                f"<h2>Figures</h2>"
                f"{images}</body></html>")


def judge_all(records: list[dict], rule: verdicts.Rule = "paired",
              resamples: int | None = None) -> dict[tuple[str, str], verdicts.GroupVerdicts]:
    """Every (task, model) group's verdicts under `rule`."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["task"], r["model"])].append(r)
    return {key: verdicts.judge(analysis.with_variants(rows), rule, resamples) for key, rows in groups.items()}


def build(results: Path | Sequence[Path], out: Path, levels: list[float] | None = None,
          rule: verdicts.Rule = "paired", resamples: int | None = None) -> Path:
    """Write report.html, report.md and PNG figures for every (task, model) in the results database(s); verdicts by
    `rule` (paired: per-example outcomes; paper: the paper's rule). Several databases (a track's parts, each in its
    own folder) make one report: their runs are told apart by (task, model), so nothing is merged but the tables."""
    databases = [results] if isinstance(results, Path) else list(results)
    records = [r for db in databases for r in ResultStore(db).records()]
    if not records:
        where = " or ".join(repr(str(db)) for db in databases)
        raise SmcBenchError(f"no finished runs in {where}: run `smc-bench grid` or `smc-bench run` first")
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out)
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["task"], r["model"])].append(r)
    judged = judge_all(records, rule, resamples)
    # Each folder's inference measurements keep their own machine line, so they stay per folder.
    measured = [m for m in (speed.load(db) for db in databases) if m]
    variants = {r["run_id"]: r["variant"] for rows in groups.values() for r in analysis.with_variants(rows)}
    overlaps = {key: _mask_overlaps(analysis.with_variants(rows)) for key, rows in groups.items()}
    lazy = [_lazy(f"{task} / {Path(model).name}", analysis.with_variants(rows), overlaps[(task, model)])
            for (task, model), rows in sorted(groups.items())]
    speedups = {key: value for m in measured for key, value in speed.speedups(m, variants).items()}
    _across_tasks(report, judged, speedups, lazy)
    for m in measured:
        report.sections += speed.sections(m, variants, lambda key: f"{key[0]} / {Path(key[1]).name}", report.figure)
    for (task, model), rows in sorted(groups.items()):
        _group(report, task, model, rows, levels, judged[(task, model)], overlaps[(task, model)])
    _time_check(report, [db.parent for db in databases], records)
    report.sections.append(("Run metadata", summary.run_metadata(records)))
    (out / "report.md").write_text(report.markdown())
    (out / "report.html").write_text(report.html())
    return out / "report.html"


def _across_tasks(report: Report, judged: dict[tuple[str, str], verdicts.GroupVerdicts],
                  speedups: dict[tuple[str, str], dict[str, dict[float, float]]],
                  lazy: list[findings.Lazy] = ()) -> None:
    """Every method's first failing level on every (task, model), dense and chance beside (and, where measured,
    the speedup the pruned model had there); a heatmap; and task difficulty against prunability."""
    summaries = [summary.summarise(f"{task} / {Path(model).name}", g, speedups.get((task, model), {}))
                 for (task, model), g in sorted(judged.items())]
    if not any(s.failing for s in summaries):
        return
    rules = {v.rule for g in judged.values() for v in g.methods.values()}
    how = (f"the first level at which the method is significantly worse than dense ({significance.RULE}), with "
           "the 95 % interval of sparse − dense there" if "paired" in rules else "")
    if "paper" in rules:
        marked = "marked \"paper's rule\": " if len(rules) > 1 else ""
        how += ("; " if how else "") + f"{marked}{verdicts.PAPER_RULE}"
    if speedups:
        how += ("; ×N: the measured batch-1 speedup over dense of that pruned model, its best checked inference "
                "backend (what the method could have bought before it failed; \"What the sparsity buys\")")
    report.sections.append(("Across tasks: first failing sparsity", f"Each cell: {how}. \"-\" no level fails up to "
                            "the highest level run (each task's table says what its test set could resolve); "
                            "blank: not run.\n\n" + summary.summary_table(summaries)))
    for title, text in findings.sections(judged, lambda key: f"{key[0]} / {Path(key[1]).name}", lazy):
        report.sections.append((f"The paper's findings at this scale: {title}", text))
    report.figure(summary.heatmap(summaries), "across-tasks-failing", "First failing sparsity, every task")
    fig = summary.difficulty_figure(summaries)
    if fig is not None:
        report.figure(fig, "across-tasks-difficulty", "Task difficulty vs prunability")


def _group(report: Report, task: str, model: str, rows: list[dict], levels: list[float] | None,
           judged: verdicts.GroupVerdicts, overlaps: list[Overlap]) -> None:
    label = f"{task} / {Path(model).name}"
    slug = f"{task.replace('/', '-')}-{Path(model).name}"
    metric = Metric.of(rows[-1])  # the newest record's declaration (older records fall back to accuracy)
    rows, by_method, dense = analysis.method_curves(rows)
    _data_notes(report, label, rows)
    _method_notes(report, label, rows)
    _curves(report, label, slug, metric, by_method, dense, analysis.controls(rows), judged.baselines)
    _secondary(report, label, metric, rows)
    _breakdown(report, label, metric, rows, levels)
    if dense and by_method:  # a group with only its dense run has nothing to fail
        _failing(report, label, metric, by_method, dense, judged)
        _why(report, label, rows, judged)
    _reached(report, label, rows)
    _layerwise(report, label, slug, rows, levels)
    _overlap(report, label, overlaps)
    _weight_change(report, label, slug, [r for r in rows if not is_sparse(r["method"], r["target_sparsity"])])


def _data_notes(report: Report, label: str, rows: list[dict]) -> None:
    """What the task says a reader must know about its data (an inferred grouping, chosen class boundaries), once
    per distinct note across the group's runs."""
    notes = list(dict.fromkeys(n for r in rows for n in (r.get("data") or {}).get("notes", [])))
    if notes:
        report.sections.append((f"About the data: {label}", "\n".join(notes)))


def _method_notes(report: Report, label: str, rows: list[dict]) -> None:
    """What a reader must know of how the runs were made, where it is not what they would assume: task versions
    or training settings mixed in one group; per method variant its version, the pruned selection, the share of the
    selected weights a layer-wise method had to prune by magnitude instead (tensors without layer inputs), and a
    pruning interval left at its default."""
    lines = []
    versions = analysis.task_versions(rows)
    if len(versions) > 1:
        lines.append(f"Runs of task versions {', '.join(map(str, versions))} are mixed here: the task changed "
                     "between them; compare runs of one version.\n")
    mixed = analysis.mixed_training(rows)
    if mixed:
        lines.append(f"Runs trained with different settings are mixed here ({'; '.join(mixed)}): the verdicts pair "
                     "them as they are; compare runs trained alike (one output folder per training setting).\n")
    table = []
    by_variant: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if is_sparse(r["method"], r["target_sparsity"]):
            by_variant[r["variant"]].append(r)
    for variant, runs in sorted(by_variant.items()):
        notes = [r.get("notes") or {} for r in runs]
        method_versions = sorted({(r.get("config") or {}).get("method_version", 1) for r in runs})
        presets = sorted({(r.get("selection") or {}).get("preset", "?") for r in runs if r.get("selection")})
        fallback = [n["magnitude_pruned_fraction"] for n in notes if "magnitude_pruned_fraction" in n]
        intervals = sorted({n["interval"] for n in notes if "interval" in n and "interval_source" in n})
        cells = [
            ", ".join(map(str, method_versions)),
            ", ".join(presets) or "-",
            f"{statistics.fmean(fallback):.1%}" if fallback else "-",
            (", ".join(map(str, intervals)) + " updates (default: 1/20 of the run)") if intervals else "-",
        ]
        if cells != ["1", cells[1], "-", "-"]:  # only what differs from a plain run
            table.append(f"| {cell(variant)} | " + " | ".join(cells) + " |")
    if table:
        lines += ["| method | version | pruned tensors | pruned by magnitude instead | interval |",
                  "|---|---|---|---|---|", *table]
    if lines:
        report.sections.append((f"How the methods ran: {label}", "\n".join(lines)))


def _time_check(report: Report, folders: list[Path], records: list[dict]) -> None:
    """The grids' time predictions (made before they ran, runner.timing) against what their runs took."""
    from smcbench.runner.timing import against_runs, human_time

    rows = [row for folder in folders for row in against_runs(folder, records)]
    if not rows:
        return
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["task"], r["method"])].append(r)

    def line(name: str, task: str, group: list[dict]) -> str:
        predicted, took = sum(r["predicted_s"] for r in group), sum(r["took_s"] for r in group)
        sources = ", ".join(sorted({r["source"] for r in group}))
        runs = sum(r["runs"] for r in group)
        return (f"| {cell(task)} | {cell(name)} | {runs} | {sources} | {human_time(predicted)} | {human_time(took)} "
                f"| {took / predicted - 1:+.0%} |")

    lines = ["Each grid appends what it predicted for every run still to do before it starts (OUT/predictions.jsonl: "
             "from finished runs of the same kind, else a probe of the task on this machine); here each finished "
             "run's recorded time (training, pruning, evaluation) against its latest prediction.\n",
             "| task | method | runs | predicted from | predicted | took | took vs predicted |",
             "|---|---|---|---|---|---|---|",
             *(line(method, task, group) for (task, method), group in sorted(groups.items())),
             line("all", "", rows)]
    report.sections.append(("Time: predicted against taken", "\n".join(lines)))


def _direction(metric: Metric) -> str:
    return "higher is better" if metric.higher_is_better else "lower is better"


def _curves(report: Report, label: str, slug: str, metric: Metric, by_method: dict[str, list[analysis.Point]],
            dense: list[analysis.Point] | None, controls: dict[str, analysis.Point],
            baselines: dict[str, float] | None = None) -> None:
    """The metric vs sparsity per method: a figure and a table; dense, its controls and the metric's baselines
    as lines."""
    baselines = baselines or {}
    name = metric.name
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, points in sorted(by_method.items()):
        ax.errorbar([p.sparsity for p in points], [p.mean for p in points], yerr=[p.std for p in points],
                    marker="o", capsize=3, label=method)
    if dense:
        ax.axhline(dense[0].mean, color="black", label="dense")
    for (control, point), style in zip(sorted(controls.items()), (":", "-.", (0, (5, 1))), strict=False):
        ax.axhline(point.mean, color="black", linestyle=style, label=f"{control} (dense control)")
    if metric.chance is not None:
        ax.axhline(metric.chance, color="gray", linestyle="--", label="chance")
    for (baseline, value), style in zip(sorted(baselines.items()), (":", "-.", (0, (3, 1, 1, 1))), strict=False):
        ax.axhline(value, color="gray", linestyle=style, label=f"{baseline} (baseline)")
    ax.set_xlabel("sparsity")
    ax.set_ylabel(f"{name} ({_direction(metric)})")
    ax.set_title(label)
    ax.legend(fontsize=8)
    report.figure(fig, f"curves-{slug}", f"{name.capitalize()} vs sparsity: {label}")

    head = f"dense {dense[0].mean:.3f}" if dense else "no dense run"
    head += "".join(f"; {c} {p.mean:.3f} (a dense control, not judged)" for c, p in sorted(controls.items()))
    chance = "no chance level" if metric.chance is None else f"chance {metric.chance}"
    chance += "".join(f"; {b} {v:.3f} (a baseline from the data alone)" for b, v in sorted(baselines.items()))
    unbeaten = analysis.unbeaten(metric, dense[0].mean if dense else None, baselines)
    if unbeaten:  # a sparse model can fall back to what the baseline knows and lose nothing the test sees
        chance += (f". Dense is no better than {', '.join(unbeaten)}: what the model adds over the data alone "
                   "is too small for this test to see, so its sparse runs cannot show what sparsity costs")
    report.sections.append((f"{name.capitalize()}: {label}", f"{head}; {chance}; {_direction(metric)}.\n\n"
                            + _table(by_method)))


def _table(by_method: dict[str, list[analysis.Point]]) -> str:
    """Methods x levels, mean (± the spread over seeds and folds where there are several)."""
    if not by_method:
        return "No sparse runs yet."
    all_levels = sorted({p.sparsity for v in by_method.values() for p in v})
    table = ["| method | " + " | ".join(f"{p:.3f}" for p in all_levels) + " |", "|---" * (len(all_levels) + 1) + "|"]
    for method, points in sorted(by_method.items()):
        at = {p.sparsity: p for p in points}
        cells = [f"{at[s].mean:.3f}" + (f" ± {at[s].std:.3f}" if at[s].seeds > 1 else "") if s in at else ""
                 for s in all_levels]
        table.append(f"| {cell(method)} | " + " | ".join(cells) + " |")
    return "\n".join(table)


def _secondary(report: Report, label: str, metric: Metric, rows: list[dict]) -> None:
    """The task's secondary metrics (e.g. macro-F1, equation accuracy), one table each with its direction, dense
    included."""
    for name in metric.secondary:
        by_method = analysis.curves(rows, name)
        if by_method:
            direction = "higher is better" if metric.higher_is_better_for(name) else "lower is better"
            report.sections.append((f"{name}: {label}", f"{direction}.\n\n" + _table(by_method)))


def _breakdown(report: Report, label: str, metric: Metric, rows: list[dict], levels: list[float] | None) -> None:
    """The parts of the primary metric the task declares (e.g. BLEU per direction): one row per part, one column
    per method at the chosen levels (default: the middle one), dense first; means over seeds and folds."""
    if not metric.breakdown:
        return
    sparse_levels = sorted({round(r["target_sparsity"], 3) for r in rows
                            if is_sparse(r["method"], r["target_sparsity"])})
    chosen = ([s for s in sparse_levels if any(abs(s - x) < 1e-3 for x in levels)] if levels
              else sparse_levels[len(sparse_levels) // 2:][:1])
    columns: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        level = round(r["target_sparsity"], 3)
        if not is_sparse(r["method"], r["target_sparsity"]):
            columns[r["variant"]].append(r)
        elif level in chosen:
            columns[f"{r['variant']} @ {level:.3f}"].append(r)
    names = sorted(columns, key=lambda c: (" @ " in c, c))
    lines = ["| part | " + " | ".join(map(cell, names)) + " |", "|---" * (len(names) + 1) + "|"]
    for part in metric.breakdown:
        cells = []
        for c in names:
            values = [float(r["metrics"][part]) for r in columns[c] if part in r["metrics"]]
            cells.append(f"{statistics.fmean(values):.2f}" if values else "-")
        if any(cell != "-" for cell in cells):
            lines.append(f"| {part} | " + " | ".join(cells) + " |")
    if len(lines) > 2:
        report.sections.append((f"{metric.name} by part: {label}", "\n".join(lines)))


def _failing(report: Report, label: str, metric: Metric, by_method: dict[str, list[analysis.Point]],
             dense: list[analysis.Point], judged: verdicts.GroupVerdicts) -> None:
    paired = {m: v for m, v in judged.methods.items() if v.rule == "paired"}
    if paired:
        _paired_table(report, label, metric, judged, paired)
    if len(paired) == len(judged.methods):
        return
    notes = [f"{m}: {v.note}" for m, v in judged.methods.items() if v.note]
    by_method = {m: p for m, p in by_method.items() if m not in paired}
    mean, tol, how = analysis.dense_reference(dense, metric)
    title = f"Failing sparsity (the paper's rule): {label}"
    if tol is None:
        report.sections.append((title, f"Tolerance: {how}." + "".join(f"\n{n}" for n in notes)))
        return
    lines = [*notes, f"Rule: {verdicts.PAPER_RULE}. Tolerance: {how}.", "",
             "| method | last level within tolerance | first failing level |", "|---|---|---|"]
    for method, points in sorted(by_method.items()):
        ok, fail = analysis.failing_sparsity(points, mean, tol, metric)
        lines.append(f"| {cell(method)} | {'-' if ok is None else f'{ok:.3f}'} | "
                     f"{'none (never fails)' if fail is None else f'{fail:.3f}'} |")
    report.sections.append((title, "\n".join(lines)))


def _paired_table(report: Report, label: str, metric: Metric, judged: verdicts.GroupVerdicts,
                  paired: dict[str, verdicts.MethodVerdict]) -> None:
    """Per method: each level's difference from dense with its interval, corrected p and verdict; then the
    failing level, or what the test set could not resolve, beside the paper's rule."""
    name = metric.name
    lines = [f"Rule: {significance.RULE}. Δ = sparse − dense in {name} ({_direction(metric)}); a level fails when "
             "its corrected test rejects, holds when the whole interval stays above −"
             f"{metric.tolerance if metric.tolerance is not None else '(no margin declared)'}, and is inconclusive "
             "otherwise. Lost / gained: examples dense gets right and the sparse run wrong, and the reverse (summed "
             "over seeds).", "",
             "| method | level | Δ | 95 % interval | p (Holm) | verdict | lost | gained |",
             "|---|---|---|---|---|---|---|---|"]
    summary_lines = ["| method | first failing level | Δ there [95 %] | what the test set resolves | "
                     "the paper's rule |", "|---|---|---|---|---|"]
    for method, v in sorted(paired.items()):
        for x in v.ladder.levels:
            lost, gained = (f"{x.lost}", f"{x.gained}") if x.kind == "binary" else ("-", "-")
            lines.append(f"| {cell(method)} | {x.sparsity:.3f} | {x.delta:+.4f} | [{x.low:+.4f}, {x.high:+.4f}] | "
                         f"{x.p_holm:.4f} | {x.verdict} | {lost} | {gained} |")
        f = v.ladder.failing
        examples = v.ladder.levels[0].examples
        resolved = (f"drops under {v.ladder.resolution:.4f} cannot be resolved with {examples} examples"
                    + (f" in each of {v.ladder.levels[0].seeds} run pairs (seeds or folds)"
                       if v.ladder.levels[0].seeds > 1 else ""))
        if f is None:
            inconclusive = [x.sparsity for x in v.ladder.levels if x.verdict == "inconclusive"]
            first = ("no failure detectable" if not inconclusive else
                     f"none; inconclusive from {inconclusive[0]:.3f}")
            there = "-"
        else:
            first, there = f"{f.sparsity:.3f}", f"{f.delta:+.4f} [{f.low:+.4f}, {f.high:+.4f}]"
        paper = "-" if not v.judged else ("never" if v.paper_failing is None else f"{v.paper_failing:.3f}")
        summary_lines.append(f"| {cell(method)} | {first} | {there} | {resolved} | {paper} |")
    report.sections.append((f"Failing sparsity: {label}", "\n".join(summary_lines)))
    report.sections.append((f"Paired verdicts by level: {label}", "\n".join(lines)))


def _why(report: Report, label: str, rows: list[dict], judged: verdicts.GroupVerdicts) -> None:
    """A few of the examples each method loses at its first failing level, as a reader sees them."""
    lines = []
    for method, v in sorted(judged.methods.items()):
        if v.ladder is None or v.ladder.failing is None:
            continue
        lost = verdicts.lost_examples(rows, method, v.ladder.failing.sparsity, judged.describe)
        if lost:
            lines.append(f"{method} at {v.ladder.failing.sparsity:.3f} ({v.ladder.failing.lost} lost, "
                         f"{v.ladder.failing.gained} gained):")
            lines += [f"  {text}" for text in lost]
    if lines:
        report.sections.append((f"What the failing sparse models lose: {label}",
                                "Examples the dense run answers right and the sparse run at its first failing "
                                "level wrong (* marks the right answer).\n" + "\n".join(lines)))


def _reached(report: Report, label: str, rows: list[dict]) -> None:
    """Methods that learn their sparsity end at the exact level by ranking; what they reached by themselves first,
    beside the validation score of that phase (means over seeds and folds)."""
    learned = [r for r in rows if "reached_sparsity" in (r.get("notes") or {})]
    if not learned:
        return
    groups: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for r in learned:
        groups[(r["variant"], round(r["target_sparsity"], 3))].append(r)
    lines = ["| method | level | reached by itself | validation then | after ranking + fixed-mask finish |",
             "|---|---|---|---|---|"]
    for (variant, level), runs in sorted(groups.items()):
        reached = statistics.fmean(r["notes"]["reached_sparsity"] for r in runs)
        before = [r["notes"]["learned_validation"] for r in runs if r["notes"].get("learned_validation") is not None]
        after = [r["validation_best"] for r in runs if r.get("validation_best") is not None]
        lines.append(f"| {cell(variant)} | {level:.3f} | {reached:.3f} | "
                     f"{f'{statistics.fmean(before):.3f}' if before else '-'} | "
                     f"{f'{statistics.fmean(after):.3f}' if after else '-'} |")
    report.sections.append((f"Learned sparsity: {label}", "The sparsity each learned-sparsity run reached by itself "
                            "before it was ranked to the exact level, and the validation score before and after.\n\n"
                            + "\n".join(lines)))


def _layerwise(report: Report, label: str, slug: str, rows: list[dict], levels: list[float] | None) -> None:
    sparse = [r for r in rows if is_sparse(r["method"], r["target_sparsity"]) and r.get("layers")]
    if not sparse:
        return
    available = sorted({round(r["target_sparsity"], 3) for r in sparse})
    chosen = [s for s in available if levels is None or any(abs(s - x) < 1e-3 for x in levels)]
    if levels is None:
        chosen = [available[len(available) // 2]]
    collapsed_lines = []
    for level in chosen:
        fig, ax = plt.subplots(figsize=(9, 4))
        seen = set()
        for r in sorted(sparse, key=lambda r: r["variant"]):
            if abs(round(r["target_sparsity"], 3) - level) > 1e-3 or r["variant"] in seen:
                continue
            seen.add(r["variant"])
            layers = r["layers"]
            ax.plot(range(len(layers)), [x["sparsity"] for x in layers], marker=".", label=r["variant"])
            collapsed = [short(x["name"]) for x in layers if x["collapsed"]]
            if collapsed:
                collapsed_lines.append(f"| {cell(r['variant'])} | {level:.3f} | {', '.join(collapsed)} |")
            names = [short(x["name"]) for x in layers]
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=90, fontsize=6)
        ax.set_ylabel("layer sparsity")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"Layerwise sparsity at {level:.3f}: {label}")
        ax.legend(fontsize=7)
        report.figure(fig, f"layerwise-{slug}-{level:.3f}", f"Layerwise sparsity at {level:.3f}: {label}")
    body = "No layer collapse (no selected tensor fully pruned)."
    if collapsed_lines:
        body = "| method | sparsity | collapsed tensors |\n|---|---|---|\n" + "\n".join(collapsed_lines)
    report.sections.append((f"Layer collapse: {label}", body))


@dataclass(frozen=True)
class Overlap:
    """Two method variants' masks at one level and seed: the Jaccard overlap of their kept weights."""

    level: float
    seed: int
    a: str
    b: str
    overall: float
    per_layer: dict[str, float]


def _mask_overlaps(rows: list[dict]) -> list[Overlap]:
    """Every pair of variants' masks at equal sparsity and seed (`with_variants` rows); each mask file read once."""
    by_key: dict[tuple[float, int], dict[str, dict]] = defaultdict(dict)
    for r in rows:
        path = Path(r.get("dir", "")) / MASKS
        if is_sparse(r["method"], r["target_sparsity"]) and path.is_file():
            by_key[(round(r["target_sparsity"], 3), r["seed"])][r["variant"]] = read_masks(path)
    out = []
    for (level, seed), masks in sorted(by_key.items()):
        for a, b in itertools.combinations(sorted(masks), 2):
            overall, per_layer = analysis.mask_overlap(masks[a], masks[b])
            if per_layer:  # (variants that prune disjoint tensors, e.g. Table 1's module subsets, have none)
                out.append(Overlap(level, seed, a, b, overall, per_layer))
    return out


def _lazy(label: str, rows: list[dict], overlaps: list[Overlap]) -> findings.Lazy:
    """The lazy regime's two figures for one task (findings.lazy): stages by variant, not by method name."""
    references = analysis.reference_variants(rows)
    dense = [r for r in rows if references and r["variant"] == references[0] and r.get("weight_change")]
    change = statistics.median(dense[0]["weight_change"].values()) if dense else None
    stage = {r["variant"]: stage_of(r["method"], (r.get("config") or {}).get("settings") or {}) for r in rows}
    pairs = [o for o in overlaps if {stage.get(o.a), stage.get(o.b)} == {"during", "after"}]
    if not pairs:
        return findings.Lazy(label, change)
    seed = min(o.seed for o in pairs)
    level = max(o.level for o in pairs if o.seed == seed)
    best = max((o for o in pairs if o.seed == seed and o.level == level), key=lambda o: o.overall)
    during, after = (best.a, best.b) if stage[best.a] == "during" else (best.b, best.a)
    return findings.Lazy(label, change, level, during, after, best.overall, analysis.random_overlap(level))


def _overlap(report: Report, label: str, overlaps: list[Overlap]) -> None:
    """Pairwise Jaccard overlap of kept weights between methods at equal sparsity and seed."""
    lines = []
    for o in overlaps:
        lo = min(o.per_layer, key=o.per_layer.get)
        lines.append(f"| {o.level:.3f} | {o.seed} | {cell(o.a)} | {cell(o.b)} | {o.overall:.3f} | "
                     f"{analysis.random_overlap(o.level):.3f} | {short(lo)} {o.per_layer[lo]:.3f} |")
    if lines:
        head = ("Jaccard overlap of the kept weights; two independent random masks overlap (1 − s)/(1 + s). "
                "Near-identical masks across magnitude methods are the lazy regime's signature.\n\n"
                "| sparsity | seed | method A | method B | overlap | random | least overlapping layer |\n"
                "|---|---|---|---|---|---|---|\n")
        report.sections.append((f"Mask overlap: {label}", head + "\n".join(lines)))


def _weight_change(report: Report, label: str, slug: str, dense: list[dict]) -> None:
    """‖θ_ft − θ_0‖ / ‖θ_0‖ per layer for the dense fine-tune (θ_0: the pretrained weights and seeded head), as
    the runner recorded it."""
    if not dense:
        return
    r = dense[0]
    change = r.get("weight_change")
    if not change:
        report.sections.append((f"Weight change: {label}", "Not recorded: the dense run finished before smc-bench "
                                "recorded weight change at run time (re-run it to get it)."))
        return
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.bar(range(len(change)), list(change.values()))
    ax.set_xticks(range(len(change)))
    ax.set_xticklabels([short(n) for n in change], rotation=90, fontsize=6)
    ax.set_ylabel("‖θ_ft − θ_0‖ / ‖θ_0‖")
    ax.set_yscale("log")
    ax.set_title(f"Relative weight change of the dense fine-tune: {label}")
    report.figure(fig, f"weight-change-{slug}", f"Relative weight change (dense): {label}")
    values = sorted(change.values())
    median, top = values[len(values) // 2], max(change, key=change.get)
    report.sections.append((f"Weight change: {label}", f"Dense fine-tune, relative weight change per tensor: "
                            f"median {median:.4f}, max {values[-1]:.4f} ({short(top)})."))
