"""The translation family on synthetic data in the public formats: readers, language tokens and mBART's format,
the training mixes, BLEU against sacrebleu's CLI, a tiny mBART learning a synthetic translation, every sparse
method end to end, and mbart-tiny's denoising pretraining."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import (
    CODE_PATH_METHODS,
    TINY_SETTINGS,
    TRANSLATION_WORDS,
    assert_exact_sparsity,
    make_tiny_mbart,
    make_translation_data,
    run_cli,
    synthetic_translation,
)
from smcbench.errors import SmcBenchError
from smcbench.runner.single import RunRequest, execute
from smcbench.tasks import TaskSpec, get_task
from smcbench.tasks.translation.bleu import corpus_score
from smcbench.tasks.translation.data import CARVED_DEV, detokenize_cjk, parallel, read_aligned
from smcbench.tasks.translation.languages import EVAL_DIRECTIONS, MIXES
from smcbench.tasks.translation.pretrain import noise
from smcbench.training import TrainConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_translation_data(tmp_path_factory.mktemp("translation-data"))


@pytest.fixture(scope="module")
def mbart_path(tmp_path_factory, data_root):
    texts = []
    for lang in ("fr", "cs", "de", "gu", "ja", "my", "ro", "vi", "zh"):
        train, _ = parallel(data_root, lang)
        texts += [p.xx for p in train] + [p.en for p in train]
    texts += [synthetic_translation("ru", w) for w in TRANSLATION_WORDS]
    return str(make_tiny_mbart(tmp_path_factory.mktemp("mbart") / "tiny", texts, d_model=64, layers=2))


def test_aligned_files_pair_lines_and_a_count_mismatch_names_both_files(tmp_path):
    (tmp_path / "a.fr").write_text("un\n\ndeux\n")
    (tmp_path / "a.en").write_text("one\ntwo\n2\n")
    assert [(p.xx, p.en) for p in read_aligned(tmp_path / "a.fr", tmp_path / "a.en")] == [("un", "one"),
                                                                                            ("deux", "2")]
    (tmp_path / "b.en").write_text("one\n")
    with pytest.raises(SmcBenchError, match=r"a.fr has 3 lines but .*b.en has 1"):
        read_aligned(tmp_path / "a.fr", tmp_path / "b.en")
    with pytest.raises(SmcBenchError, match="data file not found .*nope.en"):
        read_aligned(tmp_path / "a.fr", tmp_path / "nope.en")


def test_dev_pairs_come_from_dev_files_or_the_end_of_training_text(data_root):
    train, dev = parallel(data_root, "fr")
    assert (len(train), len(dev)) == (60, 8)
    train, dev = parallel(data_root, "gu")  # no dev file: carved from the end, at most a fifth
    assert (len(train), len(dev)) == (48, 12) and CARVED_DEV > 12
    train, dev = parallel(data_root, "ru")  # Tatoeba eng-rus, as the data README says
    assert (len(train), len(dev)) == (55, 13)


def test_japanese_word_segmentation_is_undone():
    assert detokenize_cjk("誰 が 一番 に 着 く か 。") == "誰が一番に着くか。"
    assert detokenize_cjk("i 'm in the club .") == "i 'm in the club ."


def test_mixes_and_evaluation_directions():
    assert MIXES["2-2"] == ("fr", "cs") and len(MIXES["5-5"]) == 5 and len(MIXES["10-10"]) == 10
    assert len(EVAL_DIRECTIONS) == 20 and ("en", "my") in EVAL_DIRECTIONS and ("ru", "en") in EVAL_DIRECTIONS


def test_training_mix_has_both_directions_of_its_languages_only(data_root, mbart_path):
    task = get_task(TaskSpec("translation/2-2", mbart_path, str(data_root), train_size=10))
    examples, lengths = task.train_examples()
    assert {(e.src, e.tgt) for e in examples} == {("fr", "en"), ("en", "fr"), ("cs", "en"), ("en", "cs")}
    assert len(examples) == 4 * 10 and len(lengths) == 40
    ten = get_task(TaskSpec("translation/10-10", mbart_path, str(data_root), train_size=5))
    assert {e.src for e in ten.train_examples()[0]} == set(MIXES["10-10"]) | {"en"}
    assert set(ten._test) == set(EVAL_DIRECTIONS) == set(task._test)  # evaluation never depends on the mix


def test_mbart_format_language_tokens_and_forced_target_start(data_root, mbart_path):
    from transformers.models.mbart.modeling_mbart import shift_tokens_right

    task = get_task(TaskSpec("translation/2-2", mbart_path, str(data_root), train_size=4))
    example = next(e for e in task.train_examples()[0] if (e.src, e.tgt) == ("fr", "en"))
    batch = task.collate([example])
    fr, en, eos = task.lang_id("fr"), task.lang_id("en"), task.tokenizer.eos_token_id
    assert batch["input_ids"][0, -2:].tolist() == [eos, fr]  # X </s> fr_XX
    labels = batch["labels"]
    assert labels[0, -2:].tolist() == [eos, en]  # Y </s> en_XX
    decoder = shift_tokens_right(labels, task.tokenizer.pad_token_id)
    assert decoder[0, 0].item() == en  # the decoder starts with the target language token
    assert task.tokenizer.convert_ids_to_tokens([fr, en]) == ["fr_XX", "en_XX"]


def test_bleu_matches_sacrebleus_own_command_line(tmp_path):
    hyps = ["the cat sat on the mat", "a dog runs in the park today", "it is raining"]
    refs = ["the cat sat on a mat", "a dog runs in the park", "it rains a lot"]
    (tmp_path / "hyp").write_text("\n".join(hyps) + "\n")
    (tmp_path / "ref").write_text("\n".join(refs) + "\n")
    cli = Path(sys.executable).with_name("sacrebleu")
    for lang, tok in (("fr", "13a"), ("zh", "zh"), ("my", "char")):
        out = subprocess.run([str(cli), str(tmp_path / "ref"), "-i", str(tmp_path / "hyp"), "-tok", tok, "-b"],
                             capture_output=True, text=True, check=True)
        assert corpus_score(hyps, refs, lang).bleu == pytest.approx(float(out.stdout.strip()), abs=0.05)
    chrf = subprocess.run([str(cli), str(tmp_path / "ref"), "-i", str(tmp_path / "hyp"), "-m", "chrf",
                           "--chrf-word-order", "2", "-b"], capture_output=True, text=True, check=True)
    assert corpus_score(hyps, refs, "fr").chrf == pytest.approx(float(chrf.stdout.strip()), abs=0.05)
    assert "tok:char" not in corpus_score(hyps, refs, "fr").signature
    assert "tok:char" in corpus_score(hyps, refs, "gu").signature


def test_a_tiny_mbart_learns_the_synthetic_translation(data_root, mbart_path, tmp_path):
    spec = TaskSpec("translation/2-2", mbart_path, str(data_root), val_size=8, eval_size=6, max_length=24,
                    options={"beam": 2})
    req = RunRequest(spec, "dense", [], TrainConfig(lr=2e-3, batch_size=16, max_steps=1500, schedule="linear",
                                                    warmup_ratio=0.05, eval_every=1500), {}, tmp_path, progress=False)
    [r] = execute(req)
    m = r["metrics"]
    assert m["bleu_fr-en"] > 60 and m["bleu_en-fr"] > 60, m  # trained directions
    assert m["bleu_trained"] > m["bleu_untrained"]  # the other eight languages were never seen in fine-tuning
    assert (r["metric"]["name"], r["metric"]["higher_is_better"], r["metric"]["chance"]) == ("bleu", True, None)
    assert r["metric"]["secondary"] == ["chrf"] and len(r["metric"]["breakdown"]) == 4 + 20
    assert r["metric"]["tolerance"] == 1.0  # a failure is 1 BLEU below dense (one dense seed)
    assert r["data"]["bleu_tokenize"]["ja"] == "ja-mecab" and "sacrebleu" in r["data"]


@pytest.mark.parametrize("method", CODE_PATH_METHODS)
def test_every_code_path_reaches_the_exact_sparsity_counting_tied_weights_once(data_root, mbart_path, code_path_out,
                                                                                     method):
    spec = TaskSpec("translation/2-2", mbart_path, str(data_root), train_size=8, val_size=4, eval_size=1,
                    max_length=12, options={"beam": 1})
    records = execute(RunRequest(spec, method, [0.2, 0.36], TrainConfig(lr=1e-3, batch_size=8, max_steps=2,
                                                                         eval_every=2),
                                 TINY_SETTINGS.get(method, {}), code_path_out, progress=False))
    for r in records:
        names = [layer["name"] for layer in r["layers"]]
        assert "model.shared.weight" in names and not any(n.startswith("lm_head") or "embed_tokens" in n
                                                           for n in names)  # tied: counted once
        assert_exact_sparsity(r, method)
        m = r["metrics"]
        directions = [k for k in m if k.startswith("bleu_") and k.count("_") == 1 and "-" in k]
        assert len(directions) == 20 and m["eval_examples"] == 20  # both directions of ten languages, one each
        assert m["bleu"] == pytest.approx(sum(m[k] for k in directions) / 20, rel=1e-12)  # the mean over them
        # The outcomes: sacreBLEU's sentence statistics per direction, which summed give each direction's BLEU.
        from sacrebleu.metrics import BLEU

        from smcbench.outcomes import OUTCOMES, read

        o = read(Path(r["dir"]) / OUTCOMES)
        assert o.kind == "bleu" and sorted(o.groups) == sorted(k[5:] for k in directions)
        for name, group in o.groups.items():
            total = [sum(col) for col in zip(*group.values, strict=True)]
            score = BLEU.compute_bleu(correct=total[2:6], total=total[6:10], sys_len=total[0], ref_len=total[1],
                                      smooth_method="exp").score
            assert score == pytest.approx(m[f"bleu_{name}"], abs=1e-9)


def test_noise_permutes_sentences_and_masks_spans_with_one_token_each():
    rng = random.Random(0)
    sentences = [[10, 11, 12, 13], [20, 21, 22], [30, 31, 32, 33, 34]]
    out = noise(sentences, mask_id=99, ratio=0.35, poisson=3.5, rng=rng)
    kept = [t for t in out if t != 99]
    assert len(kept) == 12 - round(0.35 * 12)  # exactly the masked share is gone
    assert all(not (a == 99 and b == 99) for a, b in zip(out, out[1:], strict=False))  # a span is one <mask>
    assert set(kept) <= {t for s in sentences for t in s}
    orders = {tuple(t // 10 for t in noise(sentences, 99, 0.0, 3.5, rng)) for _ in range(20)}
    assert len(orders) > 1  # sentence order is permuted


def test_pretrain_command_denoises_on_training_text_only(data_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "mbart-tiny"
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "mbart-tiny", "--steps", "2", "--data-dir", str(data_root),
                           "--out", str(out))
    assert code == 0, err
    record = json.loads((out / "smcbench_pretraining.json").read_text())
    assert "ru" not in record["lines_per_language"] and record["lines_per_language"]["fr"] == 60
    assert set(record["loss_by_step"]) == {"1", "2"}
    task = get_task(TaskSpec("translation/2-2", str(out), str(data_root), train_size=2))
    assert task.initial_model().config.d_model == 256
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "mbart-tiny", "--exclude-folds", "1", "--data-dir",
                           str(data_root), "--out", str(out))
    assert code == 2 and "do not apply" in err


@pytest.mark.skipif(not (SHARED / "translation").is_dir(), reason="the translation data (../shared/data/translation) "
                    "is not on this machine")
def test_the_real_files_are_aligned_and_flores_is_multiway():
    from smcbench.tasks.translation.data import flores_pairs

    for lang in MIXES["10-10"]:
        train, dev = parallel(SHARED, lang)
        assert train and dev
        assert len(flores_pairs(SHARED, lang)) == 1012


def test_the_tatoeba_test_drops_every_pair_seen_in_training_or_dev_text(tmp_path):
    from smcbench.tasks.translation.data import TATOEBA, seen_lines, tatoeba_test

    root = make_translation_data(tmp_path)
    train, dev = parallel(root, "fr")
    zh_train, _ = parallel(root, "zh")
    folder = root / "translation" / "tatoeba" / "eng-fra"
    folder.mkdir(parents=True)
    pairs = [("Bonjour tout le monde.", "Hello everyone."),  # new
             (train[0].xx.upper(), "Something new."),  # French side seen in training (case aside)
             ("Une phrase neuve.", dev[1].en),  # English side seen in fr dev
             ("Encore une phrase.", "  " + zh_train[2].en),  # English side seen in another language's training
             ("Bonjour tout le monde.", "Hello everyone."),  # the same pair again
             ("Au revoir.", "Goodbye.")]  # new
    (folder / f"{TATOEBA}.fra").write_text("\n".join(p[0] for p in pairs) + "\n")
    (folder / f"{TATOEBA}.eng").write_text("\n".join(p[1] for p in pairs) + "\n")
    test = tatoeba_test(root, "fr", seen_lines(root, ("fr", "zh")))
    assert (test.total, test.removed) == (6, 4)
    assert [(p.xx, p.en) for p in test.pairs] == [pairs[0], pairs[5]]


def test_with_the_tatoeba_test_bleu_is_in_domain_and_flores_is_beside(data_root, mbart_path, tmp_path):
    from smcbench.tasks.translation.data import TATOEBA

    for lang, iso, folder in (("fr", "fra", "eng-fra"), ("cs", "ces", "ces-eng")):
        path = data_root / "translation" / "tatoeba" / folder
        path.mkdir(parents=True, exist_ok=True)
        english = ["the red house", "a small blue bird", "the red house", "green trees grow"]
        (path / f"{TATOEBA}.{iso}").write_text("\n".join(synthetic_translation(lang, e) for e in english) + "\n")
        (path / f"{TATOEBA}.eng").write_text("\n".join(english) + "\n")
    spec = TaskSpec("translation/2-2", mbart_path, str(data_root), train_size=8, val_size=4, eval_size=2,
                    max_length=12, options={"beam": 1, "test": "tatoeba", "beside_size": 1})
    [r] = execute(RunRequest(spec, "dense", [], TrainConfig(lr=1e-3, batch_size=8, max_steps=1), {}, tmp_path,
                             progress=False))
    m = r["metrics"]
    assert sorted(k for k in m if k.startswith("bleu_") and k.count("_") == 1 and "-" in k) == [
        "bleu_cs-en", "bleu_en-cs", "bleu_en-fr", "bleu_fr-en"]
    assert m["eval_examples"] == 8  # two pairs (of three distinct) per trained direction
    assert m["bleu"] == pytest.approx(sum(m[f"bleu_{d}"] for d in ("cs-en", "en-cs", "en-fr", "fr-en")) / 4)
    assert len([k for k in m if k.startswith("bleu_flores_") and k.count("-") == 1]) == 20  # one sentence each
    assert r["data"]["tatoeba"] == {"fr": {"pairs": 4, "removed": 1, "kept": 3},
                                    "cs": {"pairs": 4, "removed": 1, "kept": 3}}
    assert r["metric"]["secondary"] == ["chrf", "bleu_flores"]


def test_the_held_out_dev_test_skips_the_validation_lines_and_every_line_seen_in_training(tmp_path):
    from smcbench.tasks.translation.data import held_out_test, line_keys, seen_lines

    root = make_translation_data(tmp_path)
    train, _ = parallel(root, "fr")
    _, cs_dev = parallel(root, "cs")
    pairs = [("etov1", "validation one"),  # a validation line
             ("neuf1", "new one"),  # new
             (train[3].xx, "Something new."),  # French side seen in training
             ("neuf2", " VALIDATION  one"),  # English side of a validation line (case and spacing aside)
             ("neuf1", "new one"),  # the same pair again
             ("neuf3", cs_dev[4].en),  # another language's dev line: not seen by this run, kept
             ("neuf4", "new four")]  # new
    folder = root / "translation" / "train" / "fr-en"
    (folder / "dev.fr").write_text("\n".join(p[0] for p in pairs) + "\n")
    (folder / "dev.en").write_text("\n".join(p[1] for p in pairs) + "\n")
    seen = seen_lines(root, ("fr", "cs"), with_dev=False) | line_keys(parallel(root, "fr")[1][:1])
    test = held_out_test(root, "fr", 1, seen)
    assert (test.total, test.removed) == (6, 3)
    assert [(p.xx, p.en) for p in test.pairs] == [pairs[1], pairs[5], pairs[6]]


def test_with_the_dev_test_tatoeba_and_flores_are_scored_beside(mbart_path, tmp_path):
    from smcbench.tasks.translation.data import TATOEBA

    root = make_translation_data(tmp_path / "data")  # the fixture's data, with a Tatoeba test for fr only
    path = root / "translation" / "tatoeba" / "eng-fra"
    path.mkdir(parents=True)
    english = ["the red house", "a small blue bird", "green trees grow"]
    (path / f"{TATOEBA}.fra").write_text("\n".join(synthetic_translation("fr", e) for e in english) + "\n")
    (path / f"{TATOEBA}.eng").write_text("\n".join(english) + "\n")
    spec = TaskSpec("translation/2-2", mbart_path, str(root), train_size=8, val_size=8, eval_size=3,
                    max_length=12, options={"beam": 1, "test": "dev", "beside_size": 2})
    [r] = execute(RunRequest(spec, "dense", [], TrainConfig(lr=1e-3, batch_size=8, max_steps=1), {},
                             tmp_path / "out", progress=False))
    m, data = r["metrics"], r["data"]
    assert m["eval_examples"] == 12  # 3 dev pairs (of 6 past the 2 validation lines) per trained direction
    assert m["bleu"] == pytest.approx(sum(m[f"bleu_{d}"] for d in ("cs-en", "en-cs", "en-fr", "fr-en")) / 4)
    assert sorted(k for k in m if k.startswith("bleu_tatoeba_") and "-" in k) == [
        "bleu_tatoeba_en-fr", "bleu_tatoeba_fr-en"]  # cs has no Tatoeba test here
    assert len([k for k in m if k.startswith("bleu_flores_") and k.count("-") == 1]) == 20
    assert r["metric"]["secondary"] == ["chrf", "bleu_tatoeba", "bleu_flores"]
    assert {lang: d["pairs"] - d["kept"] for lang, d in data["dev"].items()} == {
        lang: d["removed"] for lang, d in data["dev"].items()}
    assert [d["pairs"] for d in data["dev"].values()] == [6, 6] and data["tatoeba"]["fr"]["pairs"] == 3
    assert data["evaluation"].startswith("the trained languages' dev files past the validation lines;")


def test_a_dry_run_does_not_pretrain_mbart_tiny_to_probe_its_time(data_root, tmp_path, monkeypatch):
    """Regression: `grid laptop --dry-run` started pretraining mbart-tiny (half an hour) to probe a translation
    task's time, and a killed build left its hidden folder behind."""
    from smcbench.pretraining import NotBuilt, ensure_built, no_pretraining
    from smcbench.runner.grid import expand
    from smcbench.runner.spec import GridSpec
    from smcbench.runner.timing import predict
    from smcbench.tasks.translation.pretrain import tiny_folder

    monkeypatch.setenv("SMCBENCH_CACHE", str(tmp_path / "cache"))
    spec = GridSpec.model_validate({
        "name": "t", "out": str(tmp_path / "out"), "data_dir": str(data_root), "models": ["mbart-tiny"],
        "tasks": [{"task": "translation/2-2", "val_size": 4, "eval_size": 2}], "methods": ["dense", "omp_after"],
        "sparsities": [0.2], "train": {"max_steps": 2}})
    said = []
    times = predict(expand(spec), said.append)
    assert {t.source for t in times.values()} == {"unknown"} and not tiny_folder().exists()
    assert said[0].startswith("measuring translation/2-2 (mbart-tiny")
    assert said[1:] == ["no time estimate for translation/2-2 (mbart-tiny): mbart-tiny is not built yet: the first run "
                    "that needs it pretrains it (pretraining mbart-tiny, ~30 minutes); `smc-bench pretrain "
                    "mbart-tiny` builds it now"]  # once, not once per run
    stale = tmp_path / ".m.abc123"
    stale.mkdir()
    built = []
    with no_pretraining():
        with pytest.raises(NotBuilt):
            ensure_built(tmp_path / "m", "done", built.append, "building m", command="smc-bench pretrain m")
        ensure_built(tmp_path / "q", "done", lambda f: (f.mkdir(), (f / "done").touch()), "converting q")
    assert built == [] and (tmp_path / "q" / "done").is_file() and stale.exists()
    ensure_built(tmp_path / "m", "done", lambda f: (f.mkdir(), (f / "done").touch()), "building m",
                 command="smc-bench pretrain m")
    assert not stale.exists()  # removed under the lock before the build
