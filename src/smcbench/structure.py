"""The structure of transformer encoders (BERT, RoBERTa, ESM, AntiBERTy, MiniLM), found by module names: each
layer's attention heads (rows of the query, key and value projections and columns of the attention output) and
feed-forward neurons (a row of the intermediate layer and a column of the output layer); and `shrink`, which
removes fully pruned units, giving a physically smaller model with the same outputs.

A unit whose output-side slice (the attention output's columns, the feed-forward output's column) is zero already
contributes nothing, whatever its biases: so removing it, biases included, leaves the outputs unchanged.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from smcbench.errors import SmcBenchError
from smcbench.sparsity.structured import Slice, Unit, magnitude_scores, removed, structured_masks

LAYER = re.compile(r"^(.*\.layer\.(\d+))\.attention\.self$")


def _layers(model: nn.Module) -> list[tuple[int, str, nn.Module]]:
    out = []
    for name, module in model.named_modules():
        match = LAYER.match(name)
        if match and all(hasattr(module, a) for a in ("query", "key", "value", "attention_head_size")):
            out.append((int(match.group(2)), match.group(1), module))
    return sorted(out, key=lambda x: x[0])


def units(model: nn.Module) -> list[Unit]:
    """Every attention head and feed-forward neuron of the model's encoder layers (an error if it has none)."""
    found: list[Unit] = []
    for k, prefix, attn in _layers(model):
        size = attn.attention_head_size
        heads = attn.query.out_features // size
        out_dense = f"{prefix}.attention.output.dense.weight"
        for h in range(heads):
            a, b = h * size, (h + 1) * size
            found.append(Unit("head", k, h, tuple(Slice(f"{prefix}.attention.self.{p}.weight", 0, a, b)
                                                  for p in ("query", "key", "value")) + (Slice(out_dense, 1, a, b),)))
        neurons = model.get_submodule(f"{prefix}.intermediate.dense").out_features
        found += [Unit("neuron", k, j, (Slice(f"{prefix}.intermediate.dense.weight", 0, j, j + 1),
                                        Slice(f"{prefix}.output.dense.weight", 1, j, j + 1)))
                  for j in range(neurons)]
    if not found:
        raise SmcBenchError(f"{type(model).__name__} has no transformer encoder layers with attention heads and "
                            "feed-forward layers (BERT-style module names): structured pruning cannot use it")
    return found


def unit_tensors(found: list[Unit]) -> list[str]:
    return sorted({s.tensor for u in found for s in u.slices})


def unit_masks(model: nn.Module, level: float, scores: Tensor | None = None) -> dict[str, Tensor]:
    """Masks of every head and neuron tensor of `model` with whole units pruned at `level`
    (sparsity.structured.counts), the lowest by `scores` (one per unit, in `units` order; default: magnitude)."""
    found = units(model)
    tensors = unit_tensors(found)
    params = {n: p.detach() for n, p in model.named_parameters() if n in tensors}
    return structured_masks(found, params, magnitude_scores(found, params) if scores is None else scores, level,
                            tensors)


def _keep(index: Tensor, linear: nn.Linear, dim: int) -> nn.Linear:
    """A Linear keeping only `index` along `dim` (0: outputs with their biases, 1: inputs)."""
    weight = linear.weight.detach().index_select(dim, index).clone()
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None)
    out.weight = nn.Parameter(weight)
    if linear.bias is not None:
        out.bias = nn.Parameter((linear.bias.detach().index_select(0, index) if dim == 0 else linear.bias).clone())
    return out


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent), leaf, module)


def shrink(model: nn.Module, masks: dict[str, Tensor]) -> dict[str, list[int]]:
    """Remove (in place) every head and neuron whose weights the masks prune entirely; returns what was removed
    ({"heads.<layer>": [...], "neurons.<layer>": [...]}). A layer keeps at least one head."""
    found = units(model)
    gone = removed(found, masks)
    summary: dict[str, list[int]] = {}
    for k, prefix, attn in _layers(model):
        size = attn.attention_head_size
        heads = attn.query.out_features // size
        drop_h = sorted(u.index for u in gone if u.layer == k and u.kind == "head")
        if len(drop_h) == heads:
            drop_h = drop_h[1:]  # an attention layer needs a head; the kept one's output is zero anyway
        if drop_h:
            rows = torch.tensor([r for h in range(heads) if h not in drop_h for r in range(h * size, (h + 1) * size)])
            for p in ("query", "key", "value"):
                _set(model, f"{prefix}.attention.self.{p}", _keep(rows, getattr(attn, p), 0))
            name = f"{prefix}.attention.output.dense"
            _set(model, name, _keep(rows, model.get_submodule(name), 1))
            attn.num_attention_heads = heads - len(drop_h)
            attn.all_head_size = attn.num_attention_heads * size
            summary[f"heads.{k}"] = drop_h
        neurons = model.get_submodule(f"{prefix}.intermediate.dense").out_features
        drop_n = {u.index for u in gone if u.layer == k and u.kind == "neuron"}
        if drop_n:
            cols = torch.tensor([j for j in range(neurons) if j not in drop_n])
            for name, dim in ((f"{prefix}.intermediate.dense", 0), (f"{prefix}.output.dense", 1)):
                _set(model, name, _keep(cols, model.get_submodule(name), dim))
            summary[f"neurons.{k}"] = sorted(drop_n)
    return summary


SHRUNK = "smcbench_removed_units"  # the config field recording what `shrink` removed


def save_shrunk(model: nn.Module, removed_units: dict[str, list[int]], folder: Path) -> None:
    """Save a shrunk transformers model: its unchanged config with the removed units recorded, and its weights
    (safetensors). `load_shrunk` rebuilds it."""
    folder.mkdir(parents=True, exist_ok=True)
    model.config.update({SHRUNK: json.dumps(removed_units)})
    model.save_pretrained(folder)


def load_shrunk(folder: Path, auto_class: str = "AutoModelForMultipleChoice") -> nn.Module:
    """A model saved by `save_shrunk`: the full-size architecture from its config, the recorded units removed,
    then its weights loaded (strictly: every tensor must fit)."""
    import transformers
    from safetensors.torch import load_file

    from smcbench.training.checkpoint import load_model_tensors

    config = transformers.AutoConfig.from_pretrained(folder)
    record = json.loads(getattr(config, SHRUNK, "{}") or "{}")
    model = getattr(transformers, auto_class).from_config(config)
    masks: dict[str, Tensor] = {}
    found = units(model)
    params = dict(model.named_parameters())
    for u in found:
        if u.index in record.get(f"{u.kind}s.{u.layer}", []):
            for s in u.slices:
                mask = masks.setdefault(s.tensor, torch.ones_like(params[s.tensor], dtype=torch.bool))
                mask.narrow(s.dim, s.start, s.stop - s.start).fill_(False)
    shrink(model, masks)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise SmcBenchError(f"{str(folder)!r}: no safetensors weights")
    tensors: dict[str, Tensor] = {}
    for f in files:
        tensors.update(load_file(str(f)))
    load_model_tensors(model, tensors)
    return model.eval()


def encoder_flops(model: nn.Module, batch_shapes: list[tuple[int, int]]) -> float:
    """Multiply-add FLOPs (2 per multiply-add) of the encoder layers' matrix products on inputs of these
    (sequences, length) shapes: the Linear layers and the attention's two products, at the model's current
    sizes (so a shrunk model counts only what it kept). Embeddings, norms and activations are left out."""
    total = 0.0
    for _k, prefix, attn in _layers(model):
        hidden, kept = attn.query.in_features, attn.query.out_features
        neurons = model.get_submodule(f"{prefix}.intermediate.dense").out_features
        for sequences, length in batch_shapes:
            tokens = sequences * length
            total += 2 * tokens * (4 * hidden * kept + 2 * hidden * neurons) + 4 * tokens * length * kept
    return total
