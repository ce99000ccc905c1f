"""Readers for the commonsense datasets in their public formats. Each yields multiple-choice examples."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from smcbench.errors import SmcBenchError


@dataclass(frozen=True)
class Choice:
    """One candidate input: a text pair fed to the encoder as one sequence."""

    first: str
    second: str


@dataclass(frozen=True)
class MCExample:
    uid: str
    choices: tuple[Choice, ...]
    label: int | None  # None in unlabelled test splits


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise SmcBenchError(
            f"{what} not found at {str(path)!r}: pass --data-dir pointing at the folder that holds "
            "commonsense/ (the public formats; see the data README)"
        )
    return path


def _jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    with _need(path, "data file").open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise SmcBenchError(f"{path}:{number}: not valid JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise SmcBenchError(f"{path}:{number}: expected a JSON object")
            rows.append((number, row))
    return rows


def read_csqa(root: Path, split: str) -> list[MCExample]:
    """CommonsenseQA: `question.stem`, five `question.choices`, `answerKey` (absent in the test split)."""
    path = root / "commonsense" / "csqa" / f"{split}_data.jsonl"
    out = []
    for number, row in _jsonl(path):
        try:
            stem = row["question"]["stem"]
            choices = row["question"]["choices"]
            labels = [c["label"] for c in choices]
            texts = [c["text"] for c in choices]
            key = row.get("answerKey")
            label = labels.index(key) if key is not None else None
        except (KeyError, TypeError, ValueError) as err:
            raise SmcBenchError(
                f"{path}:{number}: malformed CSQA row ({type(err).__name__}: {err}); expected question.stem, "
                "question.choices[{label,text}] and answerKey among the labels"
            ) from err
        if len(texts) != 5:
            raise SmcBenchError(f"{path}:{number}: CSQA has 5 choices, this row has {len(texts)}")
        out.append(MCExample(str(row.get("id", number)), tuple(Choice(stem, t) for t in texts), label))
    return out


WINOGRANDE_SIZES = ("xs", "s", "m", "l", "xl")


def read_winogrande(root: Path, split: str, size: str = "l") -> list[MCExample]:
    """WinoGrande: each option substituted at `_`; the encoder sees (prefix + option, rest of the sentence)."""
    if split == "train":
        if size not in WINOGRANDE_SIZES:
            raise SmcBenchError(f"unknown WinoGrande train size {size!r}: choose one of {', '.join(WINOGRANDE_SIZES)}")
        name = f"train_{size}.jsonl"
    else:
        name = f"{split}.jsonl"
    path = root / "commonsense" / "winogrande" / name
    out = []
    for number, row in _jsonl(path):
        try:
            sentence = row["sentence"]
            cut = sentence.index("_")
            options = (row["option1"], row["option2"])
            answer = row.get("answer")
            label = int(answer) - 1 if answer not in (None, "") else None
        except (KeyError, TypeError, ValueError) as err:
            raise SmcBenchError(
                f"{path}:{number}: malformed WinoGrande row ({type(err).__name__}: {err}); expected sentence "
                "with '_', option1, option2 and answer 1 or 2"
            ) from err
        if label not in (None, 0, 1):
            raise SmcBenchError(f"{path}:{number}: WinoGrande answer must be 1 or 2, got {answer!r}")
        prefix, rest = sentence[:cut], sentence[cut + 1:].strip()
        out.append(MCExample(str(row.get("qID", number)), tuple(Choice(prefix + o, rest) for o in options), label))
    return out


def read_race(root: Path, split: str, level: str) -> list[MCExample]:
    """RACE (official folder format): one JSON file per passage with `article`, `questions`, `options`
    (four per question), `answers` (A-D). The encoder sees (article, question with the option)."""
    folder = _need(root / "commonsense" / "race" / split / level, "RACE folder")
    out = []
    for path in sorted(folder.glob("*.txt"), key=lambda p: (len(p.stem), p.stem)):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            article = doc["article"]
            rows = zip(doc["questions"], doc["options"], doc["answers"], strict=True)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise SmcBenchError(
                f"{path}: malformed RACE file ({type(err).__name__}: {err}); expected JSON with article, "
                "questions, options and answers of equal length"
            ) from err
        for i, (question, options, answer) in enumerate(rows):
            if len(options) != 4 or answer not in "ABCD" or len(answer) != 1:
                raise SmcBenchError(f"{path}: question {i} needs 4 options and an answer in A-D")
            seconds = [question.replace("_", o) if "_" in question else f"{question} {o}" for o in options]
            out.append(MCExample(f"{path.stem}-{i}", tuple(Choice(article, s) for s in seconds), "ABCD".index(answer)))
    if not out:
        raise SmcBenchError(f"no RACE files in {str(folder)!r}")
    return out
