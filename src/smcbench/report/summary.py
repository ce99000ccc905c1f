"""The report's cross-task view, SMC-Bench's message: where every method fails on every task, and whether harder
tasks fail earlier (the paper's finding 1), plus what a reader needs to cite a report (versions, machine, dates)."""

from __future__ import annotations

import platform
import statistics
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from smcbench.metrics import Metric
from smcbench.report.verdicts import GroupVerdicts
from smcbench.runner.disk import human, on_disk
from smcbench.runner.single import WEIGHTS


@dataclass(frozen=True)
class TaskSummary:
    label: str  # "task / model"
    metric: Metric
    dense: float | None
    highest: dict[str, float]  # method variant → the highest level it ran
    failing: dict[str, float | None]  # method variant → first failing level (None: never, up to its highest)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # paired rule: the failing level's
    rules: dict[str, str] = field(default_factory=dict)  # method variant → the rule that judged it
    controls: dict[str, float] = field(default_factory=dict)  # dense control variant → its score
    speedups: dict[str, dict[float, float]] = field(default_factory=dict)  # variant → level → measured speedup
    baselines: dict[str, float] = field(default_factory=dict)  # the metric's shallow baselines (Metric.baselines)


def summarise(label: str, judged: GroupVerdicts, speedups: dict[str, dict[float, float]] | None = None
              ) -> TaskSummary:
    """One (task, model) group's dense score and each method's first failing level, its interval and rule (and
    the measured speedups of its pruned models, where `bench inference` measured them)."""
    methods = judged.methods
    judged_methods = {m: v for m, v in methods.items() if v.judged}
    return TaskSummary(label, judged.metric, judged.dense, {m: v.highest for m, v in methods.items()},
                       {m: v.failing for m, v in judged_methods.items()},
                       {m: v.interval for m, v in judged_methods.items() if v.interval is not None},
                       {m: v.rule for m, v in judged_methods.items()}, dict(judged.controls), dict(speedups or {}),
                       dict(judged.baselines))


def summary_table(summaries: list[TaskSummary]) -> str:
    """Methods × tasks: the first failing level; "-" never fails up to the highest level it ran; blank not run."""
    methods = sorted({m for s in summaries for m in s.failing})
    mixed = len({rule for s in summaries for rule in s.rules.values()}) > 1
    head = "| method | " + " | ".join(s.label.replace("|", "\\|") for s in summaries) + " |"
    lines = [head, "|---" * (len(summaries) + 1) + "|"]
    dense = [f"{s.dense:.3f}" if s.dense is not None else "no dense run" for s in summaries]
    chance = ["-" if s.metric.chance is None else f"{s.metric.chance:g}" for s in summaries]
    lines.append("| dense (" + "/".join(sorted({s.metric.name for s in summaries})) + ") | " + " | ".join(dense)
                 + " |")
    for control in sorted({c for s in summaries for c in s.controls}):  # e.g. dense for the After methods' budget
        scores = [f"{s.controls[control]:.3f}" if control in s.controls else "" for s in summaries]
        lines.append(f"| {control.replace('|', chr(92) + '|')} (dense control) | " + " | ".join(scores) + " |")
    lines.append("| chance | " + " | ".join(chance) + " |")
    for baseline in sorted({b for s in summaries for b in s.baselines}):  # what the data alone scores
        scores = [f"{s.baselines[baseline]:.3f}" if baseline in s.baselines else "" for s in summaries]
        lines.append(f"| {baseline} (baseline) | " + " | ".join(scores) + " |")
    for m in methods:
        cells = []
        for s in summaries:
            if m not in s.failing:
                cells.append("")
            else:
                level = s.failing[m]
                interval = s.intervals.get(m)
                text = f"{level:.3f}" if level is not None else f"- (> {s.highest[m]:.3f})"
                if interval is not None:
                    text += f" [{interval[0]:+.3f}, {interval[1]:+.3f}]"
                if s.rules.get(m) == "paper" and mixed:  # marked only where the table holds both rules
                    text += " (paper's rule)"
                bought = s.speedups.get(m, {}).get(round(level, 3)) if level is not None else None
                if bought is not None:
                    text += f" ×{bought:.2f}"
                cells.append(text)
        lines.append(f"| {m.replace('|', chr(92) + '|')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def heatmap(summaries: list[TaskSummary]):
    """The summary table as a heatmap: darker fails earlier; hatched never fails within the levels run."""
    methods = sorted({m for s in summaries for m in s.failing})
    values = np.full((len(methods), len(summaries)), np.nan)
    never = np.zeros_like(values, dtype=bool)
    for j, s in enumerate(summaries):
        for i, m in enumerate(methods):
            if m in s.failing:
                level = s.failing[m]
                values[i, j] = level if level is not None else s.highest[m]
                never[i, j] = level is None
    fig, ax = plt.subplots(figsize=(2 + 1.4 * len(summaries), 1 + 0.35 * len(methods)))
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i, j in zip(*np.nonzero(~np.isnan(values)), strict=True):
        text = f"{values[i, j]:.2f}" + ("+" if never[i, j] else "")
        ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if values[i, j] < 0.6 else "black")
    ax.set_xticks(range(len(summaries)))
    ax.set_xticklabels([s.label for s in summaries], rotation=30, ha="right", fontsize=7)
    ax.set_yticks(range(len(methods)))
    ax.set_yticklabels(methods, fontsize=7)
    ax.set_title("First failing sparsity (+: never fails up to that level)")
    fig.colorbar(image, ax=ax, label="sparsity")
    return fig


def difficulty_figure(summaries: list[TaskSummary]):
    """Task difficulty (the dense score above chance) against prunability (the median first failing level over
    methods; a method that never fails counts at the highest level run). One panel per metric."""
    usable = [s for s in summaries if s.dense is not None and s.failing]
    metrics = sorted({s.metric.name for s in usable})
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, name in zip(axes[0], metrics, strict=True):
        for s in (s for s in usable if s.metric.name == name):
            x = s.dense - (s.metric.chance or 0.0)
            levels = [lvl if lvl is not None else s.highest[m] for m, lvl in s.failing.items()]
            y = statistics.median(levels)
            ax.scatter([x], [y], label=s.label)
        # A legend, not labels beside the points: tasks of similar difficulty sit on one another (the laptop
        # track's CSQA and SVAMP did).
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15))
        chance = " above chance" if any(s.metric.chance is not None for s in usable if s.metric.name == name) else ""
        ax.set_xlabel(f"dense {name}{chance} (higher: easier)")
        ax.set_ylabel("median first failing sparsity over methods")
        ax.set_ylim(0, 1)
        ax.set_title(f"Task difficulty vs prunability ({name})")
    return fig


def run_metadata(records: list[dict]) -> str:
    """What produced the report's numbers and this page: code versions recorded by the runs, this machine's
    package versions, and the dates."""
    versions = sorted({r.get("code_version") or "unrecorded" for r in records})
    dates = sorted(r["finished_at"] for r in records if r.get("finished_at"))

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    lines = ["| what | value |", "|---|---|",
             f"| runs | {len(records)} |",
             f"| smc-bench (code version of the runs) | {', '.join(versions)} |",
             f"| first / last run finished | {dates[0] if dates else '-'} / {dates[-1] if dates else '-'} |",
             f"| report made with | smc-bench {version('smc-bench')}, torch {version('torch')}, transformers "
             f"{version('transformers')}, Python {platform.python_version()} |",
             f"| machine | {platform.platform()}, {platform.machine()} |",
             f"| kept on disk | {storage(records)} |"]
    return "\n".join(lines)


def storage(records: list[dict]) -> str:
    """What the runs' folders hold now: which runs kept their model weights, and the bytes of each kind."""
    sizes = {"weights": 0, "masks": 0, "other": 0}
    kept, missing = [], 0
    for r in records:
        folder = Path(r["dir"]) if r.get("dir") else None
        if folder is None or not folder.is_dir():
            missing += 1
            continue
        for kind, size in on_disk(folder).items():
            sizes[kind] += size
        if (folder / WEIGHTS).is_file():
            kept.append(r["method"])
    methods = ", ".join(f"{m} {kept.count(m)}" for m in sorted(set(kept)))
    text = (f"model weights of {len(kept)} of {len(records)} runs{' (' + methods + ')' if kept else ''}: "
            f"{human(sizes['weights'])}; masks (every sparse run, bit-packed): {human(sizes['masks'])}; configs "
            f"and results: {human(sizes['other'])}. Every run without weights is reproducible from its config, "
            "seed and masks")
    return text + (f"; {missing} run folder(s) not found here" if missing else "")
