"""Readers for the protein thermostability datasets in their public formats (HotProtein HP-S2C2, HP-S2C5).

Each returns labelled sequences per fold and split. HP-S2C5's five classes are a grouping of its seven growth
temperatures inferred from the class counts the paper gives (the source states no grouping): see S2C5_CLASSES.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from smcbench.errors import SmcBenchError

AMINO_ACIDS = set("ACDEFGHIKLMNPQRSTVWYBZXUO")  # the 20 standard, ambiguity codes B/Z/X, selenocysteine, pyrrolysine


@dataclass(frozen=True)
class Protein:
    uid: str
    sequence: str
    label: int


def _need(path: Path) -> Path:
    if not path.is_file():
        raise SmcBenchError(f"data file not found at {str(path)!r}: pass --data-dir pointing at the folder that holds "
                            "protein/ (the public formats; see the data README)")
    return path


def _check_sequence(sequence: str, where: str) -> str:
    sequence = sequence.strip().upper()
    if not sequence:
        raise SmcBenchError(f"{where}: empty sequence")
    bad = set(sequence) - AMINO_ACIDS
    if bad:
        raise SmcBenchError(f"{where}: not an amino-acid sequence (characters {''.join(sorted(bad))!r})")
    return sequence


def read_fasta(path: Path) -> dict[str, str]:
    """UniProt FASTA: `>db|ACCESSION|NAME ...` headers (the id is the accession between the first two `|`; a
    header without `|` uses its first word), sequence lines until the next header."""
    records: dict[str, list[str]] = {}
    header_line: dict[str, int] = {}
    current: str | None = None
    with _need(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith(">"):
                head = line[1:]
                parts = head.split("|")
                current = parts[1] if len(parts) >= 3 else head.split()[0] if head.split() else ""
                if not current:
                    raise SmcBenchError(f"{path}:{number}: FASTA header without an id")
                if current in records:
                    raise SmcBenchError(f"{path}:{number}: id {current!r} appears twice (first at line "
                                        f"{header_line[current]})")
                records[current], header_line[current] = [], number
            elif current is None:
                raise SmcBenchError(f"{path}:{number}: sequence line before the first '>' header")
            else:
                records[current].append(line)
    return {uid: _check_sequence("".join(lines), f"{path}:{header_line[uid]} ({uid})")
            for uid, lines in records.items()}


def _csv_rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    with _need(path).open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise SmcBenchError(f"{path}:1: missing column(s) {missing}; expected {', '.join(columns)}")
        for number, row in enumerate(reader, 2):
            if None in row or any(row[c] is None for c in columns):
                raise SmcBenchError(f"{path}:{number}: malformed row (expected {len(reader.fieldnames)} fields)")
            yield number, row


S2C2_FOLDS = 10


def read_s2c2(root: Path, fold: int, split: str) -> list[Protein]:
    """HP-S2C2: `sequences.fasta` and `folds.csv` (fold, split, uniprot_id, label, growth_temp_c); label 1 is
    the hot class."""
    folder = root / "protein" / "hotprotein_s2c2"
    sequences = read_fasta(folder / "sequences.fasta")
    path = folder / "folds.csv"
    out = []
    for number, row in _csv_rows(path, ("fold", "split", "uniprot_id", "label")):
        try:
            row_fold, label = int(row["fold"]), int(row["label"])
        except ValueError as err:
            raise SmcBenchError(f"{path}:{number}: fold and label must be integers ({err})") from err
        if row["split"] not in ("train", "test"):
            raise SmcBenchError(f"{path}:{number}: split must be train or test, got {row['split']!r}")
        if label not in (0, 1):
            raise SmcBenchError(f"{path}:{number}: HP-S2C2 labels are 0 or 1, got {label}")
        if row_fold != fold or row["split"] != split:
            continue
        uid = row["uniprot_id"]
        if uid not in sequences:
            raise SmcBenchError(f"{path}:{number}: {uid!r} has no sequence in {folder / 'sequences.fasta'}")
        out.append(Protein(uid, sequences[uid], label))
    if not out:
        raise SmcBenchError(f"{path}: no {split} rows for fold {fold}")
    return out


# HP-S2C5's growth temperatures (°C) -> the paper's five classes, Cryophilic (0) to Hyperthermophilic (4). Inferred:
# the source gives seven temperatures and no grouping; this is the grouping that reproduces the paper's class
# counts (73, 387, 195, 196, 189). 39 °C in the hottest class is what the counts imply, not a biological claim.
S2C5_CLASSES = {2.5: 0, 8.0: 1, 15.0: 1, 27.5: 2, 72.5: 3, 39.0: 4, 80.0: 4}
S2C5_NAMES = ("Cryophilic", "Psychrophilic", "Mesophilic", "Thermophilic", "Hyperthermophilic")
S2C5_FOLDS = 10


def read_s2c5(root: Path, fold: int, split: str) -> list[Protein]:
    """HP-S2C5: `s2c5_{fold}_{train,test}.csv` with gene, sequence, tgt_reg (growth temperature), set, validation."""
    path = root / "protein" / "hotprotein_s2c5" / f"s2c5_{fold}_{split}.csv"
    out = []
    for number, row in _csv_rows(path, ("gene", "sequence", "tgt_reg")):
        try:
            temperature = float(row["tgt_reg"])
        except ValueError as err:
            raise SmcBenchError(f"{path}:{number}: tgt_reg must be a temperature ({err})") from err
        if temperature not in S2C5_CLASSES:
            raise SmcBenchError(f"{path}:{number}: growth temperature {temperature} is not one of HP-S2C5's "
                                f"{sorted(S2C5_CLASSES)}")
        sequence = _check_sequence(row["sequence"], f"{path}:{number}")
        out.append(Protein(row["gene"], sequence, S2C5_CLASSES[temperature]))
    if not out:
        raise SmcBenchError(f"{path}: no rows")
    return out
