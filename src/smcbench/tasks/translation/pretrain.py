"""`mbart-tiny`: a small mBART-shaped model that smc-bench pretrains itself, since no translation model ships its
weights in a package here.

Corpus: the monolingual sides of the parallel training files of every language here (data.monolingual: never a
dev, FLORES-200 or Tatoeba line; no Russian, whose only text is Tatoeba's), at most `lines_per_language` lines of
each so that the small languages are not drowned out. Vocabulary: a SentencePiece unigram model trained on the same
text, wrapped as mBART's tokenizer (its special tokens and the 25 mBART-cc25 language tokens). Objective: mBART's
denoising: a document (a few consecutive sentences of one language) with its sentences permuted and 35 % of its
tokens masked in spans of Poisson(3.5) length, each span one <mask>, is reconstructed; the language token closes
the input and opens the output, as in mBART. The result is a normal `transformers` folder
(MBartForConditionalGeneration + MBartTokenizer) cached under $SMCBENCH_CACHE (default ~/.cache/smcbench).
"""

from __future__ import annotations

import io
import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from smcbench.cache import cache_dir
from smcbench.errors import SmcBenchError
from smcbench.pretraining import (
    RECORD,
    LossCurve,
    PretrainRequest,
    ensure_built,
    register_pretrainer,
    write_folder,
)
from smcbench.tasks.translation.data import monolingual
from smcbench.tasks.translation.languages import ALL, MIXES

TINY_NAME = "mbart-tiny"
# mBART's shape (pre-LN Transformer, learned positions, scaled and tied embeddings), scaled down for a laptop CPU.
TINY_SHAPE = {"d_model": 256, "encoder_layers": 3, "decoder_layers": 3, "encoder_attention_heads": 4,
              "decoder_attention_heads": 4, "encoder_ffn_dim": 1024, "decoder_ffn_dim": 1024,
              "max_position_embeddings": 256}
# Sized for a laptop CPU: about 0.8 s an update on a 2-core machine (2,000 updates: ~30 minutes alone; the
# denoising loss on a fixed batch went 5.21 -> 3.66 -> 3.06 at updates 200, 1,000, 2,000).
PRETRAIN_DEFAULTS = {"steps": 2000, "batch_size": 32, "lr": 1e-3, "vocab_size": 8000, "lines_per_language": 20000,
                     "sentences_per_document": 3, "max_tokens": 96, "mask_ratio": 0.35, "span_poisson": 3.5,
                     "seed": 0}


def tiny_folder() -> Path:
    return cache_dir() / "models" / TINY_NAME


def train_vocabulary(texts: list[str], vocab_size: int, seed: int) -> tuple[bytes, list[tuple[str, float]]]:
    """A SentencePiece unigram model of `texts`: (the model file's bytes, its pieces with their log-probabilities,
    without SentencePiece's own control pieces)."""
    import sentencepiece as spm

    model = io.BytesIO()
    random.Random(seed).shuffle(texts)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
                                   model_type="unigram", character_coverage=0.9995, hard_vocab_limit=False,
                                   num_threads=2, minloglevel=2, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1)
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())
              if not (processor.is_control(i) or processor.is_unknown(i))]
    return model.getvalue(), pieces


def build_tokenizer(pieces: list[tuple[str, float]]):
    """mBART's tokenizer over `pieces`: ids 0-3 are <s>, <pad>, </s>, <unk> (fairseq's), then the pieces, then the
    language tokens and <mask>, as in mBART-cc25."""
    from transformers import MBartTokenizer
    from transformers.models.mbart.tokenization_mbart import FAIRSEQ_LANGUAGE_CODES

    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces]
    vocab += [(code, 0.0) for code in FAIRSEQ_LANGUAGE_CODES] + [("<mask>", 0.0)]
    return MBartTokenizer(vocab=vocab)


def noise(sentences: list[list[int]], mask_id: int, ratio: float, poisson: float, rng: random.Random) -> list[int]:
    """mBART's noise: the sentences in a random order, then spans covering `ratio` of the tokens (lengths drawn
    from Poisson(`poisson`), at least 1) each replaced by one <mask>."""
    order = sentences[:]
    rng.shuffle(order)
    tokens = [t for s in order for t in s]
    budget = round(ratio * len(tokens))
    masked = [False] * len(tokens)
    while budget > 0 and not all(masked):
        length = max(1, min(budget, _poisson(poisson, rng)))
        start = rng.randrange(len(tokens))
        for i in range(start, min(len(tokens), start + length)):
            if not masked[i]:
                masked[i] = True
                budget -= 1
    out: list[int] = []
    for token, hidden in zip(tokens, masked, strict=True):
        if not hidden:
            out.append(token)
        elif not out or out[-1] != mask_id:
            out.append(mask_id)
    return out


def _poisson(lam: float, rng: random.Random) -> int:
    # Knuth's method: fine for the small rates used here.
    import math

    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def pretrain_tiny(data_dir: Path, out: Path | None = None, progress: bool = True, **overrides: Any) -> Path:
    """Train the vocabulary, pretrain mbart-tiny by denoising, save it; returns the folder."""
    from transformers import MBartConfig, MBartForConditionalGeneration

    from smcbench.training import TrainConfig, train

    settings = {**PRETRAIN_DEFAULTS, **overrides}
    cap = settings["lines_per_language"]
    # An evenly spaced sample of each language's lines (English comes from every pair's file, not the first only).
    text = {lang: lines[:: max(1, len(lines) // cap)][:cap]
            for lang, lines in monolingual(data_dir, MIXES["10-10"]).items()}
    if not any(text.values()):
        raise SmcBenchError(f"{TINY_NAME}: no training text under {data_dir / 'translation'}")

    def fill(tmp: Path) -> None:
        start = time.perf_counter()
        model_file, pieces = train_vocabulary([s for lines in text.values() for s in lines],
                                              settings["vocab_size"], settings["seed"])
        (tmp / "sentencepiece.bpe.model").write_bytes(model_file)  # the trained model itself, for provenance
        tokenizer = build_tokenizer(pieces)
        eos, mask = tokenizer.eos_token_id, tokenizer.mask_token_id
        documents = _documents(tokenizer, text, settings["sentences_per_document"], settings["max_tokens"])
        config = MBartConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, decoder_start_token_id=eos,
                             forced_eos_token_id=eos, scale_embedding=True, dropout=0.1, **TINY_SHAPE)
        torch.manual_seed(settings["seed"])
        model = MBartForConditionalGeneration(config)
        rng = random.Random(settings["seed"] + 1)

        def collate(rows: list[tuple[int, list[list[int]]]]) -> dict[str, torch.Tensor]:
            inputs = [noise(doc, mask, settings["mask_ratio"], settings["span_poisson"], rng) + [eos, lang]
                      for lang, doc in rows]
            labels = [[t for s in doc for t in s] + [eos, lang] for lang, doc in rows]
            return _pad(inputs, labels, tokenizer.pad_token_id)

        cfg = TrainConfig(lr=settings["lr"], batch_size=settings["batch_size"], max_steps=max(1, settings["steps"]),
                          warmup_ratio=0.05, weight_decay=0.01, seed=settings["seed"])
        log = LossCurve(collate(documents[:: max(1, len(documents) // 64)][:64]),
                        every=max(1, settings["steps"] // 10))
        if settings["steps"]:  # 0: keep the random initialisation (the control for "pretraining helps")
            train(model, documents, collate, cfg, lengths=[sum(map(len, d)) for _, d in documents], callbacks=[log],
                  progress=progress, description=f"pretrain {TINY_NAME}")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / RECORD).write_text(json.dumps({
            "model": TINY_NAME, "objective": f"mBART denoising: sentence permutation, {settings['mask_ratio']:.0%} "
            f"of tokens masked in Poisson({settings['span_poisson']}) spans, one <mask> per span",
            "corpus": "the monolingual sides of the parallel training files (no dev, FLORES-200 or Tatoeba text; no "
                      "Russian)", "lines_per_language": {k: len(v) for k, v in text.items()},
            "documents": len(documents), "vocabulary": len(tokenizer), "settings": settings, "shape": TINY_SHAPE,
            "loss_by_step": log.losses, "seconds": time.perf_counter() - start}, indent=1))

    return write_folder(out or tiny_folder(), fill)


def _documents(tokenizer, text: dict[str, list[str]], per_document: int,
               max_tokens: int) -> list[tuple[int, list[list[int]]]]:
    """(language token id, sentences as token ids): consecutive sentences of one language, cut to `max_tokens`."""
    out = []
    for lang, lines in text.items():
        lang_id = tokenizer.convert_tokens_to_ids(ALL[lang].mbart)
        encoded = tokenizer(lines, add_special_tokens=False)["input_ids"]
        for k in range(0, len(encoded), per_document):
            doc, used = [], 0
            for sentence in encoded[k:k + per_document]:
                sentence = sentence[: max_tokens - used]
                if sentence:
                    doc.append(sentence)
                    used += len(sentence)
            if doc:
                out.append((lang_id, doc))
    return out


def _pad(inputs: list[list[int]], labels: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    """Inputs padded with <pad> (masked out), labels with -100 (ignored by the loss); the model shifts the labels
    into decoder inputs itself (mBART: the closing language token opens the decoder)."""
    width, label_width = max(map(len, inputs)), max(map(len, labels))
    ids = torch.full((len(inputs), width), pad, dtype=torch.long)
    target = torch.full((len(labels), label_width), -100, dtype=torch.long)
    for i, (a, b) in enumerate(zip(inputs, labels, strict=True)):
        ids[i, : len(a)] = torch.tensor(a)
        target[i, : len(b)] = torch.tensor(b)
    return {"input_ids": ids, "attention_mask": (ids != pad).long(), "labels": target}


def ensure_tiny(data_dir: Path) -> Path:
    """The cached mbart-tiny, pretrained first if missing (one process at a time)."""
    return ensure_built(tiny_folder(), RECORD, lambda folder: pretrain_tiny(data_dir, folder, progress=False),
                        f"pretraining {TINY_NAME}, ~30 minutes", command=f"smc-bench pretrain {TINY_NAME}")


@register_pretrainer(TINY_NAME)
def pretrain_mbart_tiny(request: PretrainRequest) -> Path:
    """`smc-bench pretrain mbart-tiny`: one corpus for every translation task (no evaluation text in it)."""
    if request.task or request.exclude_folds or request.options:
        raise SmcBenchError(f"{TINY_NAME} has one corpus for every translation task: --task, --exclude-folds and "
                            "--option do not apply")
    settings = {k: v for k, v in (("steps", request.steps), ("max_tokens", request.max_length)) if v is not None}
    return pretrain_tiny(request.data_dir, request.out, **settings)
