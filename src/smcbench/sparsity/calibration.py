"""Calibration activations for layer-wise pruning (SparseGPT, Wanda): what each selected Linear layer reads.

`prune_layerwise` runs calibration batches through the model and prunes its Linear layers one input group at a
time in execution order: layers that read the same tensor (a transformer's query, key and value) form a group,
statistics are collected for the group only, the group is pruned, and the next group sees the outputs of the layers
already pruned before it (SparseGPT's sequential setting). `sequential=False` collects every layer's statistics in
one pass over the dense model (faster, the layers then ignore each other's pruning).

Selected tensors that are not Linear weights (embeddings, recurrent weights) or that the forward pass never reaches
are returned to the caller (the methods prune them by magnitude at the same level and say so in the run's notes).
Tokens are not told apart: padding positions in a batch count like real ones (dynamic padding keeps them few).
Pure torch: the model is called through `forward(batch)`, whatever it returns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from smcbench.errors import SmcBenchError
from smcbench.sparsity.selection import weight_owners


class InputStatistics(ABC):
    """Running statistics of a Linear layer's inputs (rows of x with `in_features` columns)."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.in_features = in_features
        self.rows = 0

    @abstractmethod
    def add(self, x: Tensor) -> None:
        """Accumulate a batch of the layer's inputs."""


class SquaredNorms(InputStatistics):
    """Σ x_j² per input feature (Wanda's ‖X_j‖₂²)."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        super().__init__(in_features, device)
        self.sum_sq = torch.zeros(in_features, dtype=torch.float64, device=device)

    def add(self, x: Tensor) -> None:
        x = x.reshape(-1, self.in_features)
        self.sum_sq += x.double().square().sum(0)
        self.rows += x.shape[0]


class Hessian(InputStatistics):
    """H = XᵀX / n over the calibration rows (SparseGPT's layer Hessian, up to its factor 2)."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        super().__init__(in_features, device)
        self.sum = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)

    def add(self, x: Tensor) -> None:
        x = x.reshape(-1, self.in_features).double()
        self.sum.addmm_(x.T, x)
        self.rows += x.shape[0]

    def matrix(self) -> Tensor:
        return self.sum / max(self.rows, 1)


def linear_layers(model: nn.Module, params: dict[str, nn.Parameter]) -> dict[str, nn.Linear]:
    """The Linear layer of each selected weight whose every owner is a Linear layer (sparsity.selection.
    weight_owners; a weight shared by several Linear layers: the first). Only a Linear layer defines the
    least-squares problem over its inputs that these methods solve; a weight tied to an embedding has none."""
    return {n: ms[0] for n, ms in weight_owners(model, params).items()
            if ms and all(isinstance(m, nn.Linear) for m in ms)}


class _Collected(Exception):
    """Raised by a statistics hook once every layer of the group has read its input: the rest of the forward pass
    cannot change the group's statistics."""


def called_once(layers: dict[str, nn.Linear], forward: Callable[[Any], Any], batches: Sequence[Any]) -> set[str]:
    """The layers every calibration batch's forward pass calls exactly once (a decoder's layers, called once per
    step, are not among them)."""
    counts: dict[str, list[int]] = {n: [] for n in layers}

    def hook(name: str) -> Callable:
        def count(module: nn.Module, args: tuple) -> None:
            counts[name][-1] += 1

        return count

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            for batch in batches:
                for c in counts.values():
                    c.append(0)
                forward(batch)
    finally:
        for h in handles:
            h.remove()
    return {n for n, c in counts.items() if all(k == 1 for k in c)}


def input_groups(layers: dict[str, nn.Linear], forward: Callable[[Any], Any], batch: Any) -> list[list[str]]:
    """The layers grouped by the tensor they read, groups in the order the forward pass reaches them (layers it
    never reaches are left out)."""
    calls: list[tuple[str, Tensor]] = []  # inputs are held until the end, so no tensor identity is reused

    def hook(name: str) -> Callable:
        return lambda module, args: calls.append((name, args[0]))

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            forward(batch)
    finally:
        for h in handles:
            h.remove()
    groups: list[tuple[Tensor, list[str]]] = []
    placed: set[str] = set()
    for name, x in calls:
        if name in placed:  # a layer called again (shared weights, a recurrent decoder): its first input decides
            continue
        placed.add(name)
        for tensor, members in groups:
            if tensor is x:
                members.append(name)
                break
        else:
            groups.append((x, [name]))
    return [members for _, members in groups]


def collect(layers: dict[str, nn.Linear], names: Sequence[str], statistics: type[InputStatistics],
            forward: Callable[[Any], Any], batches: Sequence[Any], stop_early: bool = False) -> dict[str,
                                                                                                 InputStatistics]:
    """One pass over the calibration batches, collecting `statistics` of the inputs of the layers `names`.
    `stop_early` (every one of them is called once per forward pass): each pass stops as soon as they all have
    read their input, since the layers after them cannot change it. Sequential pruning of a deep model then runs
    the prefix up to each group, not the whole model, per group."""
    stats = {n: statistics(layers[n].in_features, layers[n].weight.device) for n in names}
    waiting: set[str] = set()

    def hook(name: str) -> Callable:
        def add(module: nn.Module, args: tuple) -> None:
            stats[name].add(args[0].detach())
            waiting.discard(name)
            if stop_early and not waiting:
                raise _Collected

        return add

    handles = [layers[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            for batch in batches:
                waiting.update(names)
                try:
                    forward(batch)
                except _Collected:
                    pass
    finally:
        for h in handles:
            h.remove()
    return stats


def prune_layerwise(model: nn.Module, params: dict[str, nn.Parameter], masks: dict[str, Tensor],
                    prune_layer: Callable[[str, nn.Parameter, Tensor, InputStatistics], None],
                    statistics: type[InputStatistics], forward: Callable[[Any], Any], batches: Sequence[Any],
                    sequential: bool = True) -> list[str]:
    """Prune the selected Linear weights with `prune_layer(name, weight, mask, stats)` (which narrows the mask in
    place and may update the weight), in execution order. The model runs in eval mode. Returns the selected
    tensors it could not calibrate (not a Linear weight, or never reached by `forward`), for the caller to prune
    otherwise."""
    if not batches:
        raise SmcBenchError("layer-wise pruning needs at least one calibration batch")
    layers = linear_layers(model, params)
    training = model.training
    model.eval()
    try:
        groups = input_groups(layers, forward, batches[0])
        once = called_once(layers, forward, batches) if sequential else set()
        for names in groups if sequential else [[n for g in groups for n in g]]:
            # A layer called again later in the pass (a decoder's) needs the whole pass.
            stats = collect(layers, names, statistics, forward, batches, stop_early=once.issuperset(names))
            for name in names:
                with torch.no_grad():
                    prune_layer(name, params[name], masks[name], stats[name])
                    params[name].mul_(masks[name])
    finally:
        model.train(training)
    done = {n for g in groups for n in g}
    return [n for n in params if n not in done]
