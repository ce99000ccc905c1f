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


def _bleu(target: str):
    from sacrebleu.metrics import BLEU

    # force: small_parallel_enja's English is tokenized ("it 's here ."), so a model fine-tuned on it writes " ."
    # endings; sacrebleu would warn on every evaluation. The flag silences that check only: scores are unchanged.
    return BLEU(tokenize=ALL[target].bleu_tokenize, force=True)


def corpus_score(hypotheses: list[str], references: list[str], target: str) -> Score:
    """BLEU and chrF++ of `hypotheses` against one reference each, in target language `target`."""
    from sacrebleu.metrics import CHRF

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    bleu = _bleu(target)
    chrf = CHRF(word_order=2)
    b = bleu.corpus_score(hypotheses, [references])
    c = chrf.corpus_score(hypotheses, [references])
    return Score(b.score, c.score, f"{bleu.get_signature()} | {chrf.get_signature()}")


def sentence_statistics(hypotheses: list[str], references: list[str], target: str) -> list[list[int]]:
    """sacreBLEU's statistics of each sentence (hypothesis length, reference length, matching n-grams for n = 1..4,
    total n-grams for n = 1..4), from its public scoring of the sentence as a corpus of one: summed over any subset
    of sentences they give that subset's corpus BLEU (BLEU.compute_bleu), what a paired bootstrap resamples."""
    bleu = _bleu(target)
    out = []
    for h, r in zip(hypotheses, references, strict=True):
        score = bleu.corpus_score([h], [[r]])
        out.append([score.sys_len, score.ref_len, *score.counts, *score.totals])
    return out

