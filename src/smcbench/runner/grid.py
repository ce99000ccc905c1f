"""The grid as a DAG of runs, and the executors that run it.

Nodes are single runs (one method at one sparsity, or a dense fine-tune) whose id is the hash of their resolved
config, the same id `smc-bench run` uses, so the grid and single runs share results. One dense node per (task,
model, seed, training config) feeds every After node; LTH rounds form a chain (round k prunes round k − 1's
trained model); everything else is independent. A node whose result exists is done and skipped, so a crashed grid
resumes by running the same command again.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from smcbench.errors import SmcBenchError
from smcbench.methods import DENSE, SelectionSettings, get_method, method_settings
from smcbench.runner.identity import config_id
from smcbench.runner.single import (
    RunRequest,
    check_keep_weights,
    drop_weights,
    execute,
    resolve,
    run_dir,
)
from smcbench.runner.spec import GridSpec
from smcbench.runner.tracking import check_tracker
from smcbench.tasks import TaskSpec
from smcbench.tasks.registry import task_info


@dataclass(frozen=True)
class Node:
    id: str
    label: str
    request: RunRequest
    deps: tuple[str, ...]

    def configs(self) -> list[dict]:
        """The config of each run the node makes (several levels for a method that shares them)."""
        r = self.request
        if get_method(r.method).reference:
            return [r.dense_config()]
        return [r.run_config(s) for s in r.sparsities]

    def result_paths(self) -> list[Path]:
        """The result.json of each run the node makes."""
        return [run_dir(self.request, c) / "result.json" for c in self.configs()]

    def result_path(self) -> Path:
        return self.result_paths()[-1]

    def done(self) -> bool:
        return all(p.is_file() for p in self.result_paths())


def expand(spec: GridSpec, out: Path | None = None, keep_weights: str | None = None,
           log: str | None = None) -> list[Node]:
    """The grid's nodes in an order where every node comes after its dependencies. The methods say what they need:
    the dense fine-tune (one node per task, model, seed, fold and training config, shared), a chain (one node per
    level, each after the one before), or nothing. A spec's `also` parts add their nodes; a node two parts share
    (the same run) is listed once. Under `keep_weights` none, the nodes keep what later nodes need and
    `drop_all_weights` clears it when the grid ends."""
    spec.check()  # every method's settings validate (strictly for a method's own entry) before anything runs
    policy = keep_weights or spec.keep_weights
    check_keep_weights(policy)
    tracker = log or spec.log
    check_tracker(tracker)
    nodes: dict[str, Node] = {}
    for part in spec.parts():
        for node in _expand_part(part, out or Path(spec.out), "all" if policy == "all" else "needed", tracker):
            nodes.setdefault(node.id, node)
    return list(nodes.values())


def _expand_part(spec: GridSpec, out: Path, keep: str, log: str | None) -> list[Node]:
    entries = [(get_method(name), {**spec.settings, **own}, own) for name, own in spec.method_entries()]
    # Fails before any run when a level is out of reach (per entry: a variant's settings may fix its level).
    built = [method_settings(m.name, settings, f"method {m.name}") for m, settings, _ in entries]
    levels = [m.levels(spec.sparsities, st) for (m, _, _), st in zip(entries, built, strict=True)]
    needs_dense = [m.uses_dense(st) for (m, _, _), st in zip(entries, built, strict=True)]
    overrides = spec.overrides()
    nodes: list[Node] = []
    for entry in spec.tasks:
        folds = entry.folds if entry.folds is not None else list(range(task_info(entry.task).folds)) or [None]
        data = entry.model_dump(exclude={"task", "folds"})
        for model, seed, fold in itertools.product(spec.models, spec.seeds, folds):
            task, cfg = resolve(TaskSpec(entry.task, model, spec.data_dir, seed=seed, fold=fold, **data), overrides)
            where = f"{entry.task} {model} seed {seed}" + ("" if fold is None else f" fold {fold}")
            dense = RunRequest(task, DENSE, [], cfg, {}, out, False, keep, log)
            dense_id = config_id(dense.dense_config())
            if any(m.reference or needs for (m, _, _), needs in zip(entries, needs_dense, strict=True)):
                nodes.append(Node(dense_id, f"{where}: {DENSE}", dense, ()))
            for (method, settings, own), method_levels, needs in zip(entries, levels, needs_dense, strict=True):
                if method.reference:
                    continue
                # A variant shows its own settings.
                name = method.name + (f" ({', '.join(f'{k}={v}' for k, v in own.items())})" if own else "")
                start = (dense_id,) if needs else ()
                if method.chained:
                    previous = start
                    for k, level in enumerate(method.chain(max(method_levels)), 1):
                        req = RunRequest(task, method.name, [level], cfg, settings, out, False, keep, log)
                        node_id = config_id(req.run_config(level))
                        nodes.append(Node(node_id, f"{where}: {name} round {k} ({level:.3f})", req, previous))
                        previous = (node_id,)
                    continue
                if method.shares_levels:  # one node trains what the levels share once, then makes each level
                    req = RunRequest(task, method.name, list(method_levels), cfg, settings, out, False, keep, log)
                    deps = start + tuple(_source_node(nodes, req, source, s, where, dense)
                                         for source in method.sources(req.settings) for s in method_levels)
                    levels_text = ", ".join(f"{s:.3f}" for s in method_levels)
                    nodes.append(Node(config_id(req.run_config(max(method_levels))),
                                      f"{where}: {name} @ {levels_text}", req, deps))
                    continue
                for s in method_levels:
                    req = RunRequest(task, method.name, [s], cfg, settings, out, False, keep, log)
                    deps = start + tuple(_source_node(nodes, req, source, s, where, dense)
                                         for source in method.sources(req.settings))
                    label = f"{where}: {name} @ {s:.3f}" if method.sparse else f"{where}: {name}"  # a dense control
                    nodes.append(Node(config_id(req.run_config(s)), label, req, deps))
    return nodes


def _source_node(nodes: list[Node], req: RunRequest, source: str, level: float, where: str,
                 dense: RunRequest) -> str:
    """The id of the run whose mask `req` trains again (its method `source`, the same level and selection), added
    to `nodes` when the grid does not list it, with the dense run it starts from."""
    selection = {k: v for k, v in req.settings.identity().items() if k in SelectionSettings.model_fields}
    src = RunRequest(req.spec, source, [level], req.train, selection, req.out, False, req.keep_weights, req.log)
    method = get_method(source)
    level = method.levels([level], src.settings)[-1]
    src_id = config_id(src.run_config(level))
    known = {n.id for n in nodes}
    if src_id not in known:
        deps: tuple[str, ...] = ()
        if method.needs_dense:
            deps = (config_id(dense.dense_config()),)
            if deps[0] not in known:
                nodes.append(Node(deps[0], f"{where}: {DENSE}", dense, ()))
        # A chained source (LTH) not in the grid runs its whole chain inside this node.
        nodes.append(Node(src_id, f"{where}: {source} @ {level:.3f} (mask source)", src, deps))
    return src_id


def drop_all_weights(nodes: list[Node]) -> int:
    """`keep_weights: none`: delete every node's model weights once the grid has run; returns the bytes freed."""
    return drop_weights([p.parent for n in nodes for p in n.result_paths()])


LOGS = "logs"  # OUT/logs/<node id>.log: a failed node's whole traceback


def failure_log(request: RunRequest) -> Path:
    """Where a failed grid node's whole traceback is kept (the grid prints its last line)."""
    method = get_method(request.method)
    config = request.dense_config() if method.reference else request.run_config(max(request.sparsities))
    return request.out / LOGS / f"{config_id(config)}.log"


def _run_node(request: RunRequest, threads: int) -> str:
    """Run one node (in this process, a worker process or a Ray task); a failure's whole traceback goes to its
    log before the exception goes on to the executor."""
    import traceback

    import torch

    torch.set_num_threads(threads)
    log = failure_log(request)
    try:
        execute(request)
    except Exception:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(traceback.format_exc())
        raise
    log.unlink(missing_ok=True)  # an earlier failure of this node is history now
    return "ok"


def _failure(err: BaseException, request: RunRequest) -> str:
    """A node's status line: the error's last line (what went wrong), and where the whole traceback is."""
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[-1]}" if lines and not isinstance(err, SmcBenchError) else \
        (lines[-1] if lines else type(err).__name__)
    log = failure_log(request)
    return f"failed: {text}" + (f" (traceback: {log})" if log.is_file() else "")


Progress = Callable[[Node, str, float], None]


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def run_local(nodes: list[Node], workers: int = 1, progress: Progress | None = None) -> dict[str, str]:
    """Run the pending nodes, each once its dependencies are done. `workers` > 1 runs that many worker processes,
    splitting the machine's cores between them. Returns node id → "done" | "ran" | error text | "skipped".
    `progress(node, status, seconds)` is called as each node ends."""
    status = {n.id: "done" for n in nodes if n.done()}
    pending = [n for n in nodes if n.id not in status]
    if workers <= 1:
        for node in pending:
            if any(not status.get(d, "").startswith(("done", "ran")) for d in node.deps):
                status[node.id] = "skipped: a dependency failed"
                continue
            start = time.perf_counter()
            try:
                _run_node(node.request, torch_threads())
                status[node.id] = "ran"
            except Exception as err:  # any failure: reported with its log, the rest of the grid goes on
                status[node.id] = _failure(err, node.request)
            if progress:
                progress(node, status[node.id], time.perf_counter() - start)
        return status
    threads = max(1, (os.cpu_count() or 1) // workers)
    running: dict[Future, Node] = {}
    started: dict[str, float] = {}
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        while pending or running:
            for node in list(pending):
                states = [status.get(d, "") for d in node.deps]
                if any(s.startswith(("failed", "skipped")) for s in states):
                    status[node.id] = "skipped: a dependency failed"
                    pending.remove(node)
                elif all(s in ("done", "ran") for s in states):
                    running[pool.submit(_run_node, node.request, threads)] = node
                    started[node.id] = time.perf_counter()
                    pending.remove(node)
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                node = running.pop(future)
                try:
                    future.result()
                    status[node.id] = "ran"
                except Exception as err:  # a worker's failure is reported, the rest of the grid goes on
                    status[node.id] = _failure(err, node.request)
                if progress:
                    progress(node, status[node.id], time.perf_counter() - started[node.id])
    return status


def run_ray(nodes: list[Node], address: str | None = None, cpus_per_run: float = 1.0,
            gpus_per_run: float = 0.0, progress: Progress | None = None) -> dict[str, str]:
    """Run the pending nodes as Ray tasks (a local instance, or the cluster at `address`). Each task asks for
    `cpus_per_run` CPUs and `gpus_per_run` GPUs; a node's dependencies are passed as task arguments, so Ray starts
    it only once they have finished. Every task writes its own results (shared storage on a cluster)."""
    try:
        import ray
    except ImportError as err:
        raise SmcBenchError("the Ray executor needs Ray: pip install 'smc-bench[ray]'") from err

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)(_run_node_after)
        threads = max(1, int(cpus_per_run))
        status = {n.id: "done" for n in nodes if n.done()}
        refs = {}
        start = time.perf_counter()
        for node in nodes:  # topological order: dependencies' refs exist before their dependents
            if node.id in status:
                continue
            deps = [refs[d] for d in node.deps if d in refs]
            refs[node.id] = remote.remote(node.request, threads, *deps)
        for node in nodes:
            if node.id not in refs:
                continue
            try:
                ray.get(refs[node.id])
                status[node.id] = "ran"
            except ray.exceptions.RayTaskError as err:
                cause = err.cause if getattr(err, "cause", None) is not None else err
                failed_dep = any(not status.get(d, "").startswith(("done", "ran")) for d in node.deps)
                status[node.id] = "skipped: a dependency failed" if failed_dep else _failure(cause, node.request)
            if progress:
                progress(node, status[node.id], time.perf_counter() - start)  # time since the grid started
        return status
    finally:
        if started_here:
            ray.shutdown()


def _run_node_after(request: RunRequest, threads: int, *dependencies: str) -> str:
    """A Ray task: run one node; `dependencies` are the finished dependencies' results (only their order
    matters)."""
    return _run_node(request, threads)
