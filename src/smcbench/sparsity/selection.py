"""Which tensors are prunable.

Presets follow the SMC-Bench paper: `all` prunes every Linear, Embedding and Conv weight and the weight matrices of
recurrent layers (GRU/LSTM/RNN: the GTS encoder), embeddings and classifier heads included: the paper's main
setting; `encoder` keeps embeddings and heads dense (its Appendix C setting); `esm` prunes only the attention
(query, key, value, output) and feed-forward Linear weights of the transformer layers, as the paper does for ESM
(BERT-style module names, which ESM in `transformers` shares).
Biases and norms are never selected. Every method of a run uses the same selection, so layer coverage cannot differ
between methods (a defect of the public scripts).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from smcbench.errors import SmcBenchError

PRESETS = ("all", "encoder", "esm")

# Conv1D is transformers' GPT-2 style linear layer; matched by name so the engine does not import transformers.
_LINEAR_LIKE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_LINEAR_LIKE_NAMES = ("Conv1D",)

# Task heads and poolers: dense under the `encoder` preset. The pooler feeds only the head, so it counts as head.
HEAD_PATTERN = r"(^|\.)(classifier|lm_head|qa_outputs|pooler|score|heads?)(\.|$)"
# The `esm` preset: a transformer layer's attention projections and feed-forward layers, nothing else.
ATTENTION_FFN_PATTERN = (r"\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|"
                         r"intermediate\.dense|output\.dense)\.weight$")


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, _LINEAR_LIKE) or type(module).__name__ in _LINEAR_LIKE_NAMES:
        return "linear"
    return None


def select_prunable(
    model: nn.Module,
    preset: str = "all",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> dict[str, nn.Parameter]:
    """Return the prunable weights of `model`, keyed by their names in `model.named_parameters()`.

    `include` / `exclude` are regular expressions searched in parameter names: `include` restricts the preset's
    selection to matching names, `exclude` removes matching names. Order follows `named_parameters()` (it breaks
    ties in pruning, so it must be stable). A parameter shared by several modules (tied weights) appears once.
    """
    if preset not in PRESETS:
        raise SmcBenchError(f"unknown selection preset {preset!r}: choose one of {', '.join(PRESETS)}")
    try:
        include_re = [re.compile(p) for p in include]
        exclude_re = [re.compile(p) for p in exclude]
    except re.error as err:
        raise SmcBenchError(f"bad selection pattern: {err}; patterns are Python regular expressions") from err

    kinds: dict[int, str] = {}
    for module in model.modules():
        if isinstance(module, nn.RNNBase):  # weight_ih_l0, weight_hh_l0_reverse, ...: not its biases
            for pname, p in module.named_parameters(recurse=False):
                if pname.startswith("weight_"):
                    kinds[id(p)] = "recurrent"
            continue
        kind = _kind(module)
        weight = getattr(module, "weight", None)
        if kind is not None and isinstance(weight, nn.Parameter):
            kinds[id(weight)] = kind

    selected: dict[str, nn.Parameter] = {}
    for name, param in model.named_parameters():
        kind = kinds.get(id(param))
        if kind is None:
            continue
        if preset == "encoder" and (kind == "embedding" or re.search(HEAD_PATTERN, name)):
            continue
        if preset == "esm" and not (kind == "linear" and re.search(ATTENTION_FFN_PATTERN, name)):
            continue
        if include_re and not any(p.search(name) for p in include_re):
            continue
        if any(p.search(name) for p in exclude_re):
            continue
        selected[name] = param
    if not selected:
        raise SmcBenchError(
            f"no prunable tensor selected (preset {preset!r}, include {list(include)}, exclude {list(exclude)}): "
            "the model needs Linear, Embedding, Conv or recurrent weights matching the selection"
        )
    return selected


def weight_owners(model: nn.Module, params: dict[str, nn.Parameter]) -> dict[str, list[nn.Module]]:
    """Every module whose `weight` is each selected tensor, in `model.modules()` order: one for most, several for
    a tied weight (an embedding and the LM head), none for a tensor no module holds as its `weight` (a recurrent
    layer's). The one place tied weights are worked out; each method decides what its owners allow."""
    found: dict[str, list[nn.Module]] = {n: [] for n in params}
    by_id = {id(p): n for n, p in params.items()}
    for module in model.modules():
        name = by_id.get(id(getattr(module, "weight", None)))
        if name is not None:
            found[name].append(module)
    return found

