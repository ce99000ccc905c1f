"""Layerwise and overall sparsity: a table for people, records for plots and JSON; per-layer weight change."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LayerSparsity:
    name: str
    shape: tuple[int, ...]
    numel: int
    pruned: int

    @property
    def sparsity(self) -> float:
        return self.pruned / self.numel if self.numel else 0.0

    @property
    def collapsed(self) -> bool:
        """Every weight of the tensor pruned: the layer no longer passes signal (layer collapse)."""
        return self.pruned == self.numel


def layer_sparsity(masks: dict[str, Tensor]) -> list[LayerSparsity]:
    """Per-tensor sparsity from bool masks (True = kept)."""
    return [
        LayerSparsity(name, tuple(m.shape), m.numel(), m.numel() - int(m.count_nonzero())) for name, m in masks.items()
    ]


def weight_sparsity(weights: dict[str, Tensor]) -> list[LayerSparsity]:
    """Per-tensor sparsity counted from exact zeros in the weights (for a model saved without masks)."""
    return [
        LayerSparsity(name, tuple(w.shape), w.numel(), w.numel() - int(w.count_nonzero()))
        for name, w in weights.items()
    ]


def overall_sparsity(rows: list[LayerSparsity]) -> float:
    total = sum(r.numel for r in rows)
    return sum(r.pruned for r in rows) / total if total else 0.0


def as_records(rows: list[LayerSparsity]) -> list[dict]:
    return [{**asdict(r), "shape": list(r.shape), "sparsity": r.sparsity, "collapsed": r.collapsed} for r in rows]


def format_table(rows: list[LayerSparsity], title: str = "") -> str:
    width = max([len("tensor")] + [len(r.name) for r in rows])
    lines = [title] if title else []
    lines.append(f"{'tensor':<{width}}  {'shape':>14}  {'params':>11}  {'sparsity':>8}")
    for r in rows:
        flag = "  COLLAPSED" if r.collapsed else ""
        shape = "x".join(map(str, r.shape))
        lines.append(f"{r.name:<{width}}  {shape:>14}  {r.numel:>11,}  {r.sparsity:>8.4f}{flag}")
    total = sum(r.numel for r in rows)
    lines.append(f"{'overall':<{width}}  {'':>14}  {total:>11,}  {overall_sparsity(rows):>8.4f}")
    collapsed = sum(r.collapsed for r in rows)
    if collapsed:
        lines.append(f"{collapsed} tensor(s) fully pruned (layer collapse)")
    return "\n".join(lines)


def relative_change(after: dict[str, Tensor], before: dict[str, Tensor], names: Iterable[str]) -> dict[str, float]:
    """‖θ_after − θ_before‖ / ‖θ_before‖ per tensor: small values everywhere are the lazy regime."""
    out = {}
    for n in names:
        if n in after and n in before:
            b = before[n].detach().float()
            norm = float(torch.linalg.vector_norm(b))
            out[n] = float(torch.linalg.vector_norm(after[n].detach().float() - b)) / norm if norm else 0.0
    return out
