"""Readers for the translation data in its public formats: line-aligned plain-text files (one sentence a line).

Layout under `translation/` (the data README): `train/<xx>-en/{train,dev}.{xx,en}` (English-centric parallel text;
Gujarati has no dev file), `flores200_devtest/<flores code>.devtest` (the held-out evaluation for every language),
and `tatoeba/<pair>/tatoeba-test-v2021-08-07.<iso3>`. Russian has no parallel training text here: its pairs come from
the Tatoeba eng-rus file, as the data README says, and so it is never part of the pretraining corpus (Tatoeba is
test text)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from smcbench.errors import SmcBenchError
from smcbench.tasks.translation.languages import ALL

SOURCE = "the translation data: see the data README (Multi30k, small_parallel_enja, ..., FLORES-200, Tatoeba)"
CARVED_DEV = 200  # dev pairs taken from the end of a training file without a dev file (gu, ru); at most a fifth
_CJK_SPACE = re.compile(r"(?<=[^\x00-\x7f]) (?=[^\x00-\x7f])")


@dataclass(frozen=True)
class Pair:
    """One sentence pair: `xx` in the language, `en` its English side."""

    xx: str
    en: str


def read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise SmcBenchError(f"data file not found at {str(path)!r}: pass --data-dir pointing at the folder that holds "
                            f"translation/ ({SOURCE})")
    with path.open(encoding="utf-8") as f:
        return [line.rstrip("\n").rstrip("\r") for line in f]


def read_aligned(xx_path: Path, en_path: Path) -> list[Pair]:
    """Line-aligned files: line k of one translates line k of the other. Pairs with an empty side are skipped."""
    xx, en = read_lines(xx_path), read_lines(en_path)
    if len(xx) != len(en):
        raise SmcBenchError(f"{xx_path} has {len(xx)} lines but {en_path} has {len(en)}: line-aligned files must "
                            "have equal line counts")
    return [Pair(a.strip(), b.strip()) for a, b in zip(xx, en, strict=True) if a.strip() and b.strip()]


def detokenize_cjk(line: str) -> str:
    """small_parallel_enja's Japanese is word-segmented with spaces; FLORES-200's is not. Spaces between two
    non-ASCII characters go, so training text looks like the evaluation text."""
    return _CJK_SPACE.sub("", line)


def parallel(root: Path, lang: str) -> tuple[list[Pair], list[Pair]]:
    """(training pairs, dev pairs) of `lang` with English. The dev pairs are for model selection only."""
    folder = root / "translation"
    if lang == "ru":
        pairs = read_aligned(folder / "tatoeba" / "eng-rus" / "tatoeba-test-v2021-08-07.rus",
                             folder / "tatoeba" / "eng-rus" / "tatoeba-test-v2021-08-07.eng")
        return _carve(pairs)
    pair_dir = folder / "train" / f"{lang}-en"
    train = read_aligned(pair_dir / f"train.{lang}", pair_dir / "train.en")
    if (pair_dir / f"dev.{lang}").is_file():
        dev = read_aligned(pair_dir / f"dev.{lang}", pair_dir / "dev.en")
    else:
        train, dev = _carve(train)
    if lang == "ja":
        train = [Pair(detokenize_cjk(p.xx), p.en) for p in train]
        dev = [Pair(detokenize_cjk(p.xx), p.en) for p in dev]
    if not train or not dev:
        raise SmcBenchError(f"{pair_dir}: no sentence pairs")
    return train, dev


def _carve(pairs: list[Pair]) -> tuple[list[Pair], list[Pair]]:
    n = min(CARVED_DEV, len(pairs) // 5)
    return pairs[: len(pairs) - n], pairs[len(pairs) - n:]


def flores_pairs(root: Path, lang: str) -> list[Pair]:
    """`lang` and English FLORES-200 devtest, aligned; a length mismatch is an error naming both files."""
    folder = root / "translation" / "flores200_devtest"
    return read_aligned(folder / f"{ALL[lang].flores}.devtest", folder / f"{ALL['en'].flores}.devtest")


TATOEBA = "tatoeba-test-v2021-08-07"


def tatoeba_dir(lang: str) -> str:
    """The Tatoeba test folder of `lang` with English: the two ISO 639-3 codes in alphabetical order."""
    return "-".join(sorted((ALL[lang].flores.split("_")[0], "eng")))


def has_tatoeba(root: Path, lang: str) -> bool:
    return (root / "translation" / "tatoeba" / tatoeba_dir(lang)).is_dir()


def _key(line: str) -> str:
    """What counts as the same sentence when deduplicating: case, spacing and CJK word segmentation aside."""
    return " ".join(detokenize_cjk(line).casefold().split())


@dataclass(frozen=True)
class InDomainTest:
    pairs: list[Pair]
    total: int  # pairs in the source (a Tatoeba file, a dev file past the validation lines)
    removed: int  # pairs dropped: a side seen in training or validation text, or the same pair again


def deduplicated(pairs: list[Pair], seen: set[str]) -> InDomainTest:
    """`pairs` without those with a side (compared by `_key`) in `seen` or repeating an earlier pair."""
    kept, keys = [], set()
    for p in pairs:
        key = (_key(p.xx), _key(p.en))
        if key[0] in seen or key[1] in seen or key in keys:
            continue
        keys.add(key)
        kept.append(p)
    return InDomainTest(kept, len(pairs), len(pairs) - len(kept))


def tatoeba_test(root: Path, lang: str, seen: set[str]) -> InDomainTest:
    """The Tatoeba test pairs of `lang` with English, deduplicated against `seen` (every training and dev line
    the model is fine-tuned or selected on). Tatoeba's Chinese is the source of the Chinese training text, and
    Russian trains on its Tatoeba file, so without this the "test" would hold training sentences."""
    folder = root / "translation" / "tatoeba" / tatoeba_dir(lang)
    iso = ALL[lang].flores.split("_")[0]
    return deduplicated(read_aligned(folder / f"{TATOEBA}.{iso}", folder / f"{TATOEBA}.eng"), seen)


def held_out_test(root: Path, lang: str, validation: int, seen: set[str]) -> InDomainTest:
    """The dev pairs of `lang` past its first `validation` (which select the model), deduplicated against `seen`
    (every training line and every validation line): the test drawn from the training text's own distribution
    (Multi30k's captions for fr, cs and de, which Tatoeba's conversational sentences are not)."""
    return deduplicated(parallel(root, lang)[1][validation:], seen)


def seen_lines(root: Path, langs: tuple[str, ...], with_dev: bool = True) -> set[str]:
    """The `_key` of every training line of `langs` (both sides), and of every dev line unless `with_dev` is false:
    what a test must not hold."""
    out: set[str] = set()
    for lang in langs:
        train, dev = parallel(root, lang)
        out |= line_keys([*train, *dev] if with_dev else train)
    return out


def line_keys(pairs: list[Pair]) -> set[str]:
    """The `_key` of both sides of `pairs`."""
    return {_key(side) for p in pairs for side in (p.xx, p.en)}


def monolingual(root: Path, langs: tuple[str, ...]) -> dict[str, list[str]]:
    """The monolingual sides of the training files (never dev, FLORES-200 or Tatoeba text), per language,
    English from every pair once per line; Russian has none here (its only text is Tatoeba's)."""
    out: dict[str, list[str]] = {"en": []}
    for lang in langs:
        if lang == "ru":
            continue
        train, _ = parallel(root, lang)
        out[lang] = [p.xx for p in train]
        out["en"] += [p.en for p in train]
    out["en"] = list(dict.fromkeys(out["en"]))
    return out
