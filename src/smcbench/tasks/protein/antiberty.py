"""AntiBERTy (Ruffolo et al. 2021, MIT): a BERT (8 layers, hidden 512, 25.8M parameters) pretrained by masked LM on
558M natural antibody sequences, shipped by the PyPI package `antiberty==0.1.3` (`pip install --no-deps`).

The package is never imported (it pulls in its own runner): its checkpoint and vocabulary are read as files and
converted once into a cached BERT folder (`--model antiberty`). Antibodies are one narrow protein family: for
thermostability over whole proteomes that is a domain shift, stated in every run's data notes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from smcbench.cache import cache_dir
from smcbench.errors import SmcBenchError
from smcbench.pretraining import RECORD, ensure_built, write_folder
from smcbench.tasks.protein.bert import load_tensors, save_bert

ANTIBERTY_NAME = "antiberty"
VERSION = "0.1.3"
SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
            "mask_token": "[MASK]"}
DOMAIN_NOTE = ("Model: AntiBERTy, pretrained on 558M antibody sequences only (OAS): a domain shift for "
               "thermostability, which spans whole proteomes; on one non-antibody protein its masked-LM loss is no "
               "better than a uniform guess over the 20 residues.")
INSTALL = f"pip install --no-deps antiberty=={VERSION}"


def package_files() -> tuple[Path, Path, Path]:
    """(checkpoint, config, vocabulary) of the installed package, found without importing it."""
    spec = importlib.util.find_spec("antiberty")
    if spec is None or not spec.submodule_search_locations:
        raise SmcBenchError(f"--model {ANTIBERTY_NAME}: the antiberty package is not installed: {INSTALL}")
    root = Path(next(iter(spec.submodule_search_locations))) / "trained_models"
    files = (root / "AntiBERTy_md_smooth" / "pytorch_model.bin", root / "AntiBERTy_md_smooth" / "config.json",
             root / "vocab.txt")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SmcBenchError(f"--model {ANTIBERTY_NAME}: {missing[0]} is missing: reinstall with {INSTALL}")
    return files


def folder() -> Path:
    return cache_dir() / "models" / f"{ANTIBERTY_NAME}-{VERSION}"


def convert(out: Path) -> Path:
    """The package's checkpoint → a BertForMaskedLM folder with AntiBERTy's tokenizer and a provenance record."""
    checkpoint, config_path, vocab_path = package_files()
    config = {k: v for k, v in json.loads(config_path.read_text()).items()
              if k not in ("_name_or_path", "architectures", "transformers_version", "gradient_checkpointing")}
    vocab = [line.strip() for line in vocab_path.read_text().splitlines() if line.strip()]

    def fill(tmp: Path) -> None:
        save_bert(load_tensors(checkpoint, "AntiBERTy"), config, vocab, SPECIALS, tmp, f"{checkpoint} (AntiBERTy)")
        digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
        (tmp / RECORD).write_text(json.dumps({
            "model": ANTIBERTY_NAME, "source": f"PyPI antiberty=={VERSION}: {checkpoint.name} sha256 {digest}",
            "corpus": "558M natural antibody sequences (Observed Antibody Space); none of the benchmark's data",
            "domain_notes": [DOMAIN_NOTE]}, indent=1))

    return write_folder(out, fill)


def ensure() -> Path:
    """The converted AntiBERTy folder, converted once into the cache."""
    return ensure_built(folder(), RECORD, convert, f"converting AntiBERTy (antiberty=={VERSION})")
