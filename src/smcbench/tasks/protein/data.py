"""Readers for the protein thermostability datasets in their public formats: HotProtein HP-S2C2, HP-S2C5 and HP-S,
and the FLIP splits of the Meltome Atlas.

Each returns labelled sequences per fold and split. HP-S2C5's five classes are a grouping of its seven growth
temperatures inferred from the class counts the paper gives (the source states no grouping): see S2C5_CLASSES.
Meltome is a regression set (melting temperature); its classes come from temperature thresholds: see
`meltome_classes`.
"""

from __future__ import annotations

import bisect
import csv
import json
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from smcbench.errors import SmcBenchError

AMINO_ACIDS = set("ACDEFGHIKLMNPQRSTVWYBZXUO")  # the 20 standard, ambiguity codes B/Z/X, selenocysteine, pyrrolysine


@dataclass(frozen=True)
class Protein:
    uid: str
    sequence: str
    label: int


def _need(path: Path, source: str = "") -> Path:
    if not path.is_file():
        raise SmcBenchError(f"data file not found at {str(path)!r}: pass --data-dir pointing at the folder that holds "
                            f"protein/ ({source or 'the public formats; see the data README'})")
    return path


def _check_sequence(sequence: str, where: str, lenient: bool = False) -> str:
    """Upper-cased residues; `lenient` (FLIP's files "may contain special characters") drops a trailing stop `*`
    and reads any other letter as X, while digits, punctuation and empty sequences stay errors."""
    sequence = sequence.strip().upper()
    if lenient:
        sequence = "".join(c if c in AMINO_ACIDS or not c.isalpha() else "X" for c in sequence.rstrip("*"))
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


HP_S_SOURCE = ("HP-S: the HotProtein release's S/S_target/ per-protein FASTA files and its split converted to JSON; "
               "see the README, section Protein")
HP_S_CLASSES = 5


def read_hp_s(root: Path, split: str) -> list[Protein]:
    """HP-S (5 classes) in `protein/hotprotein_s/`: the release's per-protein FASTA files `S_target/<name>.fasta`
    (or one `sequences.fasta` keyed by name) and the split as `split.json` with the release pickle's keys
    (train_names, train_labels, test_names, test_labels) or `split.csv` (name, label, split). The release ships
    the split as a pickle, which smc-bench never loads: the README gives the one-line conversion."""
    folder = root / "protein" / "hotprotein_s"
    names, labels, where = _hp_s_split(folder, split)
    per_file, single = folder / "S_target", folder / "sequences.fasta"
    pooled = read_fasta(single) if not per_file.is_dir() and single.is_file() else None
    if pooled is None and not per_file.is_dir():
        raise SmcBenchError(f"HP-S sequences not found: neither {str(per_file)!r} (the release's per-protein FASTA "
                            f"files) nor {str(single)!r} exists ({HP_S_SOURCE})")
    out = []
    for (name, raw_label, line) in zip(names, labels, where, strict=True):
        try:
            value = float(raw_label)
        except (TypeError, ValueError) as err:
            raise SmcBenchError(f"{line}: label {raw_label!r} is not a class number") from err
        if value != int(value) or not 0 <= value < HP_S_CLASSES:
            raise SmcBenchError(f"{line}: HP-S labels are 0..{HP_S_CLASSES - 1}, got {raw_label!r}")
        if pooled is not None:
            if name not in pooled:
                raise SmcBenchError(f"{line}: {name!r} has no sequence in {single}")
            sequence = pooled[name]
        else:
            sequence = _read_single_fasta(per_file / f"{name}.fasta", line)
        out.append(Protein(name, sequence, int(value)))
    if not out:
        raise SmcBenchError(f"{folder}: no {split} proteins in the split file")
    return out


def _hp_s_split(folder: Path, split: str) -> tuple[list[str], list, list[str]]:
    """(names, labels, where each came from) of one split, from split.json or split.csv."""
    as_json, as_csv = folder / "split.json", folder / "split.csv"
    if as_json.is_file():
        try:
            data = json.loads(as_json.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise SmcBenchError(f"{as_json}:{err.lineno}: not valid JSON ({err.msg})") from err
        keys = (f"{split}_names", f"{split}_labels")
        if not isinstance(data, dict) or any(not isinstance(data.get(k), list) for k in keys):
            raise SmcBenchError(f"{as_json}: needs lists {keys[0]!r} and {keys[1]!r} (the release pickle's keys)")
        names, labels = data[keys[0]], data[keys[1]]
        if len(names) != len(labels):
            raise SmcBenchError(f"{as_json}: {keys[0]} has {len(names)} entries but {keys[1]} has {len(labels)}")
        return [str(n) for n in names], labels, [f"{as_json} ({keys[0]}[{i}])" for i in range(len(names))]
    if as_csv.is_file():
        rows = [(number, row) for number, row in _csv_rows(as_csv, ("name", "label", "split"))
                if row["split"] == split]
        return ([r["name"] for _, r in rows], [r["label"] for _, r in rows],
                [f"{as_csv}:{number}" for number, _ in rows])
    pickles = sorted(p.name for p in folder.glob("*.pkl")) if folder.is_dir() else []
    hint = (f"; {pickles[0]} is a pickle, which smc-bench never loads: convert it once to split.json (README, "
            "section Protein)") if pickles else ""
    raise SmcBenchError(f"HP-S split not found: {str(as_json)!r} or {str(as_csv)!r} ({HP_S_SOURCE}){hint}")


def _read_single_fasta(path: Path, where: str) -> str:
    """One protein's FASTA file (header lines skipped, sequence lines joined), as the release stores HP-S."""
    if not path.is_file():
        raise SmcBenchError(f"{where}: no sequence file {str(path)!r}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return _check_sequence("".join(line for line in lines if line and not line.startswith(">")), str(path))


MELTOME_SPLITS = ("mixed", "full", "clustered")
MELTOME_SOURCE = "Meltome: FLIP's splits/meltome/splits.zip, unzipped into protein/meltome/"


@dataclass(frozen=True)
class MeltomeRow:
    sequence: str
    melting_c: float
    validation: bool


def read_meltome(root: Path, split_name: str, part: str) -> list[MeltomeRow]:
    """FLIP's Meltome split `protein/meltome/{split_name}_split.csv`: sequence, target (melting temperature, °C),
    set (train|test), validation (True marks training rows meant for model selection)."""
    if split_name not in MELTOME_SPLITS:
        raise SmcBenchError(f"Meltome split {split_name!r}: choose one of {', '.join(MELTOME_SPLITS)}")
    path = _need(root / "protein" / "meltome" / f"{split_name}_split.csv", MELTOME_SOURCE)
    out = []
    for number, row in _csv_rows(path, ("sequence", "target", "set", "validation")):
        if row["set"] not in ("train", "test"):
            raise SmcBenchError(f"{path}:{number}: set must be train or test, got {row['set']!r}")
        if row["set"] != part:
            continue
        try:
            melting = float(row["target"])
        except ValueError as err:
            raise SmcBenchError(f"{path}:{number}: target must be a melting temperature ({err})") from err
        flag = row["validation"].strip().lower()
        if flag not in ("true", "false", "", "nan"):
            raise SmcBenchError(f"{path}:{number}: validation must be True or False, got {row['validation']!r}")
        out.append(MeltomeRow(_check_sequence(row["sequence"], f"{path}:{number}", lenient=True), melting,
                              flag == "true"))
    if not out:
        raise SmcBenchError(f"{path}: no {part} rows")
    return out


def meltome_classes(train: Sequence[MeltomeRow], thresholds: Sequence[float] | None) -> tuple[float, ...]:
    """The class boundaries (°C): the given thresholds, or by default the median melting temperature of the
    training rows (two balanced classes). The paper states no thresholds in the sources available here, so the
    default is ours, and every run records the boundaries it used."""
    if thresholds:
        return tuple(sorted(thresholds))
    return (statistics.median(r.melting_c for r in train),)


def meltome_label(melting_c: float, boundaries: Sequence[float]) -> int:
    """Class k holds temperatures in [boundary k-1, boundary k): at or above a boundary is the hotter class."""
    return bisect.bisect_right(boundaries, melting_c)
