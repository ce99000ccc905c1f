"""Corpus BLEU and chrF++ with sacrebleu, each target language with the tokenizer that makes its score comparable
(languages.Language.bleu_tokenize). The signature (tokenizer, version) goes into the result."""

from __future__ import annotations

from dataclasses import dataclass

from smcbench.tasks.translation.languages import ALL


@dataclass(frozen=True)
class Score:
    bleu: float
    chrf: float  # chrF++ (word n-grams up to 2)
    signature: str


def corpus_score(hypotheses: list[str], references: list[str], target: str) -> Score:
    """BLEU and chrF++ of `hypotheses` against one reference each, in target language `target`."""
    from sacrebleu.metrics import BLEU, CHRF

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    bleu = BLEU(tokenize=ALL[target].bleu_tokenize)
    chrf = CHRF(word_order=2)
    b = bleu.corpus_score(hypotheses, [references])
    c = chrf.corpus_score(hypotheses, [references])
    return Score(b.score, c.score, f"{bleu.get_signature()} | {chrf.get_signature()}")
