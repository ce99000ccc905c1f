"""The ten languages of SMC-Bench's translation setting (Tang et al. 2020), English, and what each needs: mBART's
language token, its FLORES-200 file, the sacrebleu tokenizer that makes its BLEU comparable, and where its training
text is."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Language:
    code: str  # ISO 639-1, as the data folders name it
    mbart: str  # mBART-cc25's language token
    flores: str  # FLORES-200's file stem
    bleu_tokenize: str  # sacrebleu's tokenizer for BLEU when this is the target language


ENGLISH = Language("en", "en_XX", "eng_Latn", "13a")
# Burmese and Gujarati: character-level BLEU, since 13a does not segment them into comparable units (spBLEU with the
# FLORES-200 SentencePiece model is the alternative when that model is at hand; it is not offline here).
LANGUAGES = {lang.code: lang for lang in (
    Language("fr", "fr_XX", "fra_Latn", "13a"),
    Language("cs", "cs_CZ", "ces_Latn", "13a"),
    Language("de", "de_DE", "deu_Latn", "13a"),
    Language("gu", "gu_IN", "guj_Gujr", "char"),
    Language("ja", "ja_XX", "jpn_Jpan", "ja-mecab"),
    Language("my", "my_MM", "mya_Mymr", "char"),
    Language("ro", "ro_RO", "ron_Latn", "13a"),
    Language("ru", "ru_RU", "rus_Cyrl", "13a"),
    Language("vi", "vi_VN", "vie_Latn", "13a"),
    Language("zh", "zh_CN", "zho_Hans", "zh"),
)}
ALL = {**LANGUAGES, "en": ENGLISH}

# The paper's fine-tuning mixes: each language paired with English, both directions.
MIXES = {
    "2-2": ("fr", "cs"),
    "5-5": ("fr", "cs", "de", "gu", "ja"),
    "10-10": ("fr", "cs", "de", "gu", "ja", "my", "ro", "ru", "vi", "zh"),
}
# Evaluation is the same for every mix: both directions of all ten languages.
EVAL_DIRECTIONS = tuple((src, tgt) for lang in MIXES["10-10"] for src, tgt in ((lang, "en"), ("en", lang)))


def direction_name(src: str, tgt: str) -> str:
    return f"{src}-{tgt}"
