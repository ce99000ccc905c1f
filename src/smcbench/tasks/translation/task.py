"""Many-to-many translation through English, as SMC-Bench (after Tang et al. 2020): fine-tune mBART on both directions
of 2 (Fr, Cs), 5 (+ De, Gu, Ja) or 10 (+ My, Ro, Ru, Vi, Zh) language pairs; evaluate always on both directions of
all ten languages (20 directions) on FLORES-200 devtest. Metric: BLEU averaged over the 20 directions (sacrebleu,
each target language with its tokenizer: languages.py); chrF++ beside it; every direction's scores in the result.

`--model`: `mbart-tiny` (default, pretrained here by denoising: pretrain.py), `facebook/mbart-large-cc25` (the
paper's), any mBART hub id or folder. Data fields: `train_size` caps the sentence pairs per language (each gives
both directions), `val_size` is the number of validation sentences in all, spread over the training directions and
taken from the training sets' dev files (never FLORES-200), `eval_size` caps the test's sentences per direction
(FLORES-200's, or with `--option test=tatoeba|dev` those of the trained directions' test), `max_length` the tokens
per sentence (source and target, and the generation limit).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from smcbench import outcomes
from smcbench.errors import SmcBenchError
from smcbench.metrics import Metric
from smcbench.models import load_pretrained, load_tokenizer
from smcbench.pretraining import model_provenance
from smcbench.settings import Settings
from smcbench.tasks.registry import TaskRun, TaskSpec, describe_family, register_task
from smcbench.tasks.translation.bleu import corpus_score, sentence_statistics
from smcbench.tasks.translation.data import (
    InDomainTest,
    Pair,
    flores_pairs,
    has_tatoeba,
    held_out_test,
    line_keys,
    parallel,
    seen_lines,
    tatoeba_test,
)
from smcbench.tasks.translation.languages import ALL, EVAL_DIRECTIONS, LANGUAGES, MIXES, direction_name
from smcbench.tasks.translation.pretrain import TINY_NAME, ensure_tiny
from smcbench.training import batched_outputs, generation


class TranslationOptions(Settings):
    beam: int = Field(4, ge=1, description="Beam size of generation (validation and evaluation).")
    test: Literal["flores", "tatoeba", "dev"] = Field(
        "flores", description="The test the verdicts use: flores (FLORES-200 devtest, 20 directions, the paper's); "
        "tatoeba (the Tatoeba test of the trained directions); dev (each trained language's dev file past its "
        "validation lines: the training text's own distribution). tatoeba and dev drop every pair with a side in "
        "the training or model-selection text; the other tests are scored beside them (bleu_tatoeba, bleu_flores).")
    beside_size: int | None = Field(None, ge=1, description="With test=tatoeba or dev: sentences per direction of "
                                    "each test scored beside it (default: the eval size).")


@dataclass(frozen=True)
class Example:
    src: str  # language codes (fr, en, ...)
    tgt: str
    source_ids: list[int]
    target_ids: list[int]
    reference: str  # the target sentence, for BLEU


class TranslationRun(TaskRun):
    # A failure with one dense seed: 1 BLEU below dense (differences below that are within the noise of a
    # FLORES-200 subset).
    metric = Metric("bleu", higher_is_better=True, chance=None, secondary=("chrf",), tolerance=1.0, breakdown=(
        "bleu_into_en", "bleu_from_en", "bleu_trained", "bleu_untrained",
        *(f"bleu_{direction_name(s, t)}" for s, t in EVAL_DIRECTIONS)))

    def __init__(self, spec: TaskSpec, name: str, mix: str) -> None:
        super().__init__(spec)
        self.name, self.mix = name, mix
        self.languages = MIXES[mix]
        if self.options.test != "flores":  # the trained directions' scores; the other tests' beside
            beside = tuple(f"bleu_{kind}" for kind in self._beside_kinds())
            self.metric = Metric("bleu", higher_is_better=True, chance=None, secondary=("chrf", *beside),
                                 tolerance=1.0, breakdown=(
                                     *beside, "bleu_flores_trained",
                                     *(f"bleu_{direction_name(s, t)}" for s, t in self._trained_directions())))

    def _beside_kinds(self) -> list[str]:
        """The tests scored beside a tatoeba or dev test: Tatoeba's (beside dev, where a trained language has one)
        and FLORES-200's."""
        tatoeba = self.options.test == "dev" and any(has_tatoeba(self.data_dir, lang) for lang in self.languages)
        return ["tatoeba", "flores"] if tatoeba else ["flores"]

    def _trained_directions(self) -> list[tuple[str, str]]:
        return [d for lang in self.languages for d in ((lang, "en"), ("en", lang))]

    @cached_property
    def model_path(self) -> str:
        return str(ensure_tiny(self.data_dir)) if self.spec.model == TINY_NAME else self.spec.model

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.model_path)

    def provenance(self) -> dict[str, Any]:
        """A folder's pretraining record (mbart-tiny: corpus, settings, loss curve), else the hub id."""
        return model_provenance(Path(self.model_path)) if Path(self.model_path).is_dir() else super().provenance()

    def lang_id(self, lang: str) -> int:
        return self.tokenizer.convert_tokens_to_ids(ALL[lang].mbart)

    def _examples(self, pairs: Sequence[Pair], lang: str, directions: Sequence[tuple[str, str]]) -> list[Example]:
        """Both sides tokenized once; one example per pair and direction."""
        cut = self.spec.max_length - 2  # room for </s> and the language token
        xx = self.tokenizer([p.xx for p in pairs], add_special_tokens=False)["input_ids"]
        en = self.tokenizer([p.en for p in pairs], add_special_tokens=False)["input_ids"]
        out = []
        for (src, tgt) in directions:
            for p, a, b in zip(pairs, xx, en, strict=True):
                if src == lang:
                    out.append(Example(src, tgt, a[:cut], b[:cut], p.en))
                else:
                    out.append(Example(src, tgt, b[:cut], a[:cut], p.xx))
        return out

    @cached_property
    def _train(self) -> list[Example]:
        out = []
        for lang in self.languages:
            train, _ = parallel(self.data_dir, lang)
            if self.spec.train_size is not None:
                train = train[: self.spec.train_size]
            out += self._examples(train, lang, [(lang, "en"), ("en", lang)])
        return out

    @cached_property
    def _validation_pairs(self) -> dict[str, list[Pair]]:
        """Per trained language, the first dev pairs: `val_size` sentences in all over the training directions."""
        per_direction = max(1, self.spec.val_size // (2 * len(self.languages)))
        return {lang: parallel(self.data_dir, lang)[1][:per_direction] for lang in self.languages}

    @cached_property
    def _validation(self) -> dict[tuple[str, str], list[Example]]:
        return {direction: self._examples(pairs, lang, [direction])
                for lang, pairs in self._validation_pairs.items() for direction in ((lang, "en"), ("en", lang))}

    def _flores(self, size: int | None) -> dict[tuple[str, str], list[Example]]:
        out = {}
        for src, tgt in EVAL_DIRECTIONS:
            lang = tgt if src == "en" else src
            pairs = flores_pairs(self.data_dir, lang)
            out[(src, tgt)] = self._examples(pairs[:size] if size is not None else pairs, lang, [(src, tgt)])
        return out

    @cached_property
    def _tatoeba_tests(self) -> dict[str, InDomainTest]:
        """Per trained language with a Tatoeba test here: its pairs, deduplicated against the training and dev
        text of every language (the pretraining corpus is drawn from it too)."""
        seen = seen_lines(self.data_dir, tuple(LANGUAGES))
        return {lang: tatoeba_test(self.data_dir, lang, seen) for lang in self.languages
                if has_tatoeba(self.data_dir, lang)}

    @cached_property
    def _dev_tests(self) -> dict[str, InDomainTest]:
        """Per trained language: its dev pairs past the validation lines, deduplicated against the training text
        of every language and the validation lines."""
        seen = seen_lines(self.data_dir, tuple(LANGUAGES), with_dev=False)
        seen |= line_keys([p for pairs in self._validation_pairs.values() for p in pairs])
        return {lang: held_out_test(self.data_dir, lang, len(self._validation_pairs[lang]), seen)
                for lang in self.languages}

    def _directions(self, kind: str, size: int | None) -> dict[tuple[str, str], list[Example]]:
        """Test `kind`'s examples per direction, at most `size` sentences each: FLORES-200's 20 directions, or the
        trained directions that have pairs left in the Tatoeba or held-out dev test."""
        if kind == "flores":
            return self._flores(size)
        out = {}
        for lang, test in (self._tatoeba_tests if kind == "tatoeba" else self._dev_tests).items():
            pairs = test.pairs[:size] if size is not None else test.pairs
            for direction in ((lang, "en"), ("en", lang)):
                if pairs:
                    out[direction] = self._examples(pairs, lang, [direction])
        return out

    @cached_property
    def _test(self) -> dict[tuple[str, str], list[Example]]:
        """The test the verdicts use."""
        out = self._directions(self.options.test, self.spec.eval_size)
        if not out:
            raise SmcBenchError(f"{self.name}: no {self.options.test} test pairs are left for "
                                f"{', '.join(self.languages)} after deduplication against the training and "
                                "model-selection text: use --option test=flores")
        return out

    @cached_property
    def _beside(self) -> dict[str, dict[tuple[str, str], list[Example]]]:
        size = self.options.beside_size or self.spec.eval_size
        return {kind: tests for kind in self._beside_kinds() if (tests := self._directions(kind, size))}

    def train_examples(self) -> tuple[Sequence[Example], list[int]]:
        return self._train, [len(e.source_ids) + len(e.target_ids) for e in self._train]

    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        """mBART's format: source `X </s> <src>`, target `Y </s> <tgt>`; the model shifts the target into decoder
        inputs `<tgt> Y </s>` itself. Padded to the batch's longest; padded labels are -100 (no loss)."""
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        sources = [e.source_ids + [eos, self.lang_id(e.src)] for e in examples]
        targets = [e.target_ids + [eos, self.lang_id(e.tgt)] for e in examples]
        ids = torch.full((len(examples), max(map(len, sources))), pad, dtype=torch.long)
        labels = torch.full((len(examples), max(map(len, targets))), -100, dtype=torch.long)
        for i, (s, t) in enumerate(zip(sources, targets, strict=True)):
            ids[i, : len(s)] = torch.tensor(s)
            labels[i, : len(t)] = torch.tensor(t)
        return {"input_ids": ids, "attention_mask": (ids != pad).long(), "labels": labels}

    def initial_model(self) -> nn.Module:
        torch.manual_seed(self.spec.seed)
        return load_pretrained(self.model_path, "AutoModelForSeq2SeqLM")

    def translate(self, model: nn.Module, examples: list[Example]) -> list[str]:
        """Beam search into the examples' target language (one language per call: the decoder starts with its
        token), batched by source length, with the key/value cache: smcbench.training.generation's search (the
        outputs of `generate`, finished sentences leaving the batch), or `generate` itself for a model whose
        generation config asks for more than plain beam search."""
        if not examples:
            return []
        [tgt] = {e.tgt for e in examples}
        fast = generation.supported(model)

        def step(m: nn.Module, batch: dict[str, torch.Tensor]) -> list[str]:
            if fast:
                out = generation.beam_search(m, batch["input_ids"], batch["attention_mask"], self.lang_id(tgt),
                                             self.options.beam, self.spec.max_length)
            else:
                out = m.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 decoder_start_token_id=self.lang_id(tgt), num_beams=self.options.beam,
                                 max_new_tokens=self.spec.max_length, early_stopping=True, use_cache=True)
            return self.tokenizer.batch_decode(out, skip_special_tokens=True)

        return [t.strip() for t in batched_outputs(model, examples, self.collate, step,
                                                   length=lambda e: len(e.source_ids))]

    def _scores(self, model: nn.Module, by_direction: dict[tuple[str, str], list[Example]],
                hypotheses: dict[tuple[str, str], list[str]] | None = None) -> dict[str, Any]:
        scores = {}
        for (src, tgt), examples in by_direction.items():
            hyps = self.translate(model, examples)
            if hypotheses is not None:
                hypotheses[(src, tgt)] = hyps
            scores[(src, tgt)] = corpus_score(hyps, [e.reference for e in examples], tgt)
        return scores

    def validate(self, model: nn.Module) -> float:
        return statistics.fmean(s.bleu for s in self._scores(model, self._validation).values())

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return self.evaluate_outcomes(model)[0]

    def outcome_bytes(self, with_texts: bool) -> int:
        # 20 directions of FLORES-200 devtest (1,012 sentences), or the Tatoeba directions (~1,000 sentences each
        # under a usual eval size): ten statistics a sentence, the reference with text.
        directions = len(EVAL_DIRECTIONS) if self.options.test == "flores" else 2 * len(self.languages)
        return directions * min(self.spec.eval_size or 1012, 1012) * (45 + (150 if with_texts else 0))

    def _test_metrics(self, model: nn.Module, tests: dict[tuple[str, str], list[Example]],
                      prefix: str = "") -> tuple[dict[str, float], dict[str, outcomes.Group]]:
        """BLEU and chrF++ of each direction of `tests` and their means (overall, into and from English, trained
        and untrained directions), each name after `bleu`/`chrf` prefixed; the per-sentence outcomes."""
        hypotheses: dict[tuple[str, str], list[str]] = {}
        scores = self._scores(model, tests, hypotheses)
        out: dict[str, float] = {f"bleu{prefix}": statistics.fmean(s.bleu for s in scores.values()),
                                 f"chrf{prefix}": statistics.fmean(s.chrf for s in scores.values())}
        for side, chosen in (("into_en", [d for d in scores if d[1] == "en"]),
                             ("from_en", [d for d in scores if d[0] == "en"]),
                             ("trained", [d for d in scores if set(d) - {"en"} <= set(self.languages)]),
                             ("untrained", [d for d in scores if not set(d) - {"en"} <= set(self.languages)])):
            if chosen:
                out[f"bleu{prefix}_{side}"] = statistics.fmean(scores[d].bleu for d in chosen)
        for (src, tgt), s in scores.items():
            out[f"bleu{prefix}_{direction_name(src, tgt)}"] = s.bleu
            out[f"chrf{prefix}_{direction_name(src, tgt)}"] = s.chrf
        groups = {}
        for (src, tgt), examples in tests.items():  # FLORES-200 is multi-way: sentence k in every direction
            refs = [e.reference for e in examples]
            groups[direction_name(src, tgt)] = outcomes.Group(
                [str(k) for k in range(len(examples))], sentence_statistics(hypotheses[(src, tgt)], refs, tgt),
                texts=refs)
        return out, groups

    def evaluate_outcomes(self, model: nn.Module) -> tuple[dict[str, float], outcomes.Outcomes]:
        out, groups = self._test_metrics(model, self._test)
        out["eval_examples"] = sum(len(v) for v in self._test.values())
        if self.options.test != "flores":
            for kind, tests in self._beside.items():
                out.update(self._test_metrics(model, tests, f"_{kind}")[0])
        return out, outcomes.Outcomes("bleu", groups, {"smooth_method": "exp", "effective_order": False})

    def data_provenance(self) -> dict[str, Any]:
        import sacrebleu

        notes = [f"BLEU: sacrebleu {sacrebleu.__version__}, tokenizer per target language (13a; zh; ja-mecab; "
                 "character level for Burmese and Gujarati); chrF++ beside it."]
        data: dict[str, Any] = {"train_languages": list(self.languages),
                                "evaluation": "FLORES-200 devtest, 20 directions",
                                "bleu_tokenize": {lang: ALL[lang].bleu_tokenize for lang in ALL},
                                "sacrebleu": sacrebleu.__version__, "notes": notes}
        if self.options.test == "flores":
            return data
        names = {"tatoeba": "Tatoeba test v2021-08-07, trained directions",
                 "dev": "the trained languages' dev files past the validation lines",
                 "flores": "FLORES-200 devtest"}
        beside = self._beside_kinds()
        data["evaluation"] = (f"{names[self.options.test]}; " + ", ".join(names[k] for k in beside)
                              + " beside (" + ", ".join(f"bleu_{k}" for k in beside) + ")")
        for kind in [self.options.test, *beside]:
            if kind == "flores":
                continue
            tests = self._tatoeba_tests if kind == "tatoeba" else self._dev_tests
            data[kind] = {lang: {"pairs": t.total, "removed": t.removed, "kept": len(t.pairs)}
                          for lang, t in tests.items()}
            removed = ", ".join(f"{lang} {t.removed:,} of {t.total:,}" for lang, t in tests.items())
            missing = [lang for lang in self.languages if lang not in tests]
            against = "any training or dev text" if kind == "tatoeba" else "any training text or validation line"
            role = "Test" if kind == self.options.test else f"Beside it (bleu_{kind})"
            notes.append(f"{role}: {names[kind]}; pairs with a side seen in {against}, or repeated, removed "
                         f"({removed})" + (f"; no Tatoeba test for {', '.join(missing)}" if missing else "") + ".")
        notes.append("FLORES-200 devtest (the paper's test) is scored beside it as bleu_flores.")
        return data

    def train_defaults(self) -> dict[str, Any]:
        if self.spec.model == TINY_NAME:  # sized for a laptop CPU (see the README)
            return {"lr": 5e-4, "batch_size": 32, "max_steps": 2000, "warmup_ratio": 0.05, "schedule": "linear",
                    "weight_decay": 0.01, "eval_every": 500}
        # The paper's mBART setting: Adam, lr 1e-6, 40K updates.
        return {"lr": 1e-6, "max_steps": 40000, "warmup_ratio": 0.0, "schedule": "linear", "eval_every": 5000}


describe_family("translation", "mbart-tiny (default, pretrained here), an mBART hub id or folder")


def _register(mix: str) -> None:
    name = f"translation/{mix}"

    @register_task(name, default_model=TINY_NAME, options=TranslationOptions)
    def factory(spec: TaskSpec) -> TaskRun:
        return TranslationRun(spec, name, mix)


for _mix in MIXES:
    _register(_mix)
