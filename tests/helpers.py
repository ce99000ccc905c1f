"""Small builders shared by tests."""


def tiny_bert_config(**overrides):
    from transformers import BertConfig

    cfg = dict(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    cfg.update(overrides)
    return BertConfig(**cfg)


def write_jsonl(path, rows):
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


WORDS = ["river", "bank", "apple", "store", "dog", "park", "school", "book", "car", "road", "music", "table"]


def make_commonsense_data(root, n_train=48, n_dev=16):
    """Tiny CSQA, WinoGrande and RACE files in their public formats."""
    import json
    import random

    rng = random.Random(0)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = []
        for i in range(n):
            texts = rng.sample(WORDS, 5)
            rows.append({
                "answerKey": "ABCDE"[i % 5],
                "id": f"{split}-{i}",
                "question": {"stem": f"where would you find a {texts[i % 5]} number {i}?",
                             "choices": [{"label": lab, "text": t} for lab, t in zip("ABCDE", texts, strict=True)]},
            })
        write_jsonl(root / "commonsense" / "csqa" / f"{split}_data.jsonl", rows)
    for name, n in (("train_xs", n_train), ("dev", n_dev)):
        rows = [{"qID": f"{name}-{i}", "sentence": f"The {WORDS[i % 12]} was bigger than the cup so _ broke.",
                 "option1": WORDS[i % 12], "option2": "cup", "answer": str(1 + i % 2)} for i in range(n)]
        write_jsonl(root / "commonsense" / "winogrande" / f"{name}.jsonl", rows)
    for split, n in (("train", 12), ("test", 4)):
        for level in ("middle", "high"):
            folder = root / "commonsense" / "race" / split / level
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                doc = {"id": f"{i}.txt", "article": f"Tom has a {WORDS[i % 12]}. It is red and old.",
                       "questions": ["What does Tom have?", "The thing is _."],
                       "options": [[WORDS[i % 12], "a cat", "a hat", "a bat"], ["red", "blue", "new", "big"]],
                       "answers": ["A", "A"]}
                (folder / f"{i}.txt").write_text(json.dumps(doc))
    return root


def make_tiny_model(path):
    """A random-init 2-layer BERT multiple-choice model with MiniLM's tokenizer, saved as a local folder."""
    import torch
    from transformers import AutoTokenizer, BertForMultipleChoice

    from smcbench.models import resolve_model

    torch.manual_seed(0)
    BertForMultipleChoice(tiny_bert_config(vocab_size=30522, max_position_embeddings=128)).save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_model("minilm")).save_pretrained(path)
    return path


ARITHMETIC_TEMPLATES = [
    ("{n} has number0 {o} . {n} buys number1 more {o} . How many {o} does {n} have now ?", "+ number0 number1"),
    ("{n} has number0 {o} . {n} gives away number1 {o} . How many {o} are left ?", "- number0 number1"),
    ("{n} has number0 boxes with number1 {o} in each box . How many {o} in all ?", "* number0 number1"),
    ("{n} shares number0 {o} among number1 friends equally . How many {o} does each get ?", "/ number0 number1"),
    ("{n} has number0 {o} , buys number1 more and loses number2 . How many {o} now ?",
     "- + number0 number1 number2"),
]


def make_arithmetic_data(root, n_train=80, n_dev=20, folds=(0,)):
    """Tiny MAWPS / ASDiv-A folds and a SVAMP split in the public CSV format (five templates, one per equation)."""
    import csv
    import random

    from smcbench.tasks.arithmetic.expressions import evaluate_prefix

    rng = random.Random(0)
    names, objects = ["Tom", "Mary", "Sam", "Ann"], ["apples", "pens", "cards", "books"]

    def rows(n):
        out = []
        for i in range(n):
            text, eq = ARITHMETIC_TEMPLATES[i % len(ARITHMETIC_TEMPLATES)]
            count = eq.count("number")
            nums = [float(rng.randint(2, 9) * (rng.randint(2, 5) if k == 0 else 1)) for k in range(count)]
            question = text.format(n=rng.choice(names), o=rng.choice(objects))
            words = question.split()
            cells = [j for j, w in enumerate(words) if w.startswith("number")]
            out.append({"Question": question, "Numbers": " ".join(str(x) for x in nums), "Equation": eq,
                        "Answer": evaluate_prefix(eq.split(), nums), "group_nums": str(cells),
                        "Body": question, "Ques_Statement": ""})
        return out

    def write(path, data):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0]))
            w.writeheader()
            w.writerows(data)

    for name in ("cv_mawps", "cv_asdiv-a"):
        for k in folds:
            write(root / "arithmetic" / name / f"fold{k}" / "train.csv", rows(n_train))
            write(root / "arithmetic" / name / f"fold{k}" / "dev.csv", rows(n_dev))
    write(root / "arithmetic" / "mawps-asdiv-a_svamp" / "train.csv", rows(n_train))
    write(root / "arithmetic" / "mawps-asdiv-a_svamp" / "dev.csv", rows(n_dev))
    return root


def make_protein_data(root, per_fold=(8, 2), length=(30, 60)):
    """HP-S2C2 (FASTA + folds.csv) and HP-S2C5 (per-fold CSVs) in their public formats: 10 folds each. The label is
    in the composition (hot: charged residues K/E/R; other: S/T/Q/N), so a tiny model can learn it."""
    import random

    rng = random.Random(0)
    hot, other, common = "KERKEDK", "STQNSGT", "AVLIGPFMW"

    def sequence(label):
        n = rng.randint(*length)
        rich = hot if label else other
        return "M" + "".join(rng.choice(rich) if rng.random() < 0.4 else rng.choice(common) for _ in range(n))

    s2c2 = root / "protein" / "hotprotein_s2c2"
    s2c5 = root / "protein" / "hotprotein_s2c5"
    s2c2.mkdir(parents=True, exist_ok=True)
    s2c5.mkdir(parents=True, exist_ok=True)
    fasta, folds = [], ["fold,split,uniprot_id,label,growth_temp_c"]
    temps = [2.5, 8.0, 15.0, 27.5, 39.0, 72.5, 80.0]
    for k in range(10):
        for split, n in zip(("train", "test"), per_fold, strict=True):
            rows = ["gene,sequence,tgt_reg,set,validation"]
            for i in range(n):
                uid = f"P{k}{split[:2]}{i}"
                label = i % 2
                seq = sequence(label)
                fasta.append(f">tr|{uid}|{uid}_X test protein\n{seq}\n")
                folds.append(f"{k},{split},{uid},{label},{80.0 if label else 20.0}")
                rows.append(f"{uid},{sequence(i % 2)},{temps[i % len(temps)]},{split},False")
            (s2c5 / f"s2c5_{k}_{split}.csv").write_text("\n".join(rows) + "\n")
    (s2c2 / "sequences.fasta").write_text("".join(fasta))
    (s2c2 / "folds.csv").write_text("\n".join(folds) + "\n")
    return root


def _composition_sequence(rng, label, length=(30, 60)):
    """Rich in charged residues when `label` is hot, in S/T/Q/N otherwise: a tiny model can learn it."""
    rich = "KERKEDK" if label else "STQNSGT"
    n = rng.randint(*length)
    return "M" + "".join(rng.choice(rich) if rng.random() < 0.4 else rng.choice("AVLIGPFMW") for _ in range(n))


def make_meltome_data(root, sizes=(24, 6, 10), split="mixed"):
    """FLIP's Meltome split CSV (sequence, target, set, validation): `sizes` = train, validation, test rows. Melting
    temperatures near 40 °C (cool composition) or 60 °C (hot composition)."""
    import random

    rng = random.Random(1)
    rows = ["sequence,target,set,validation"]
    for part, n, flag in (("train", sizes[0], "False"), ("train", sizes[1], "True"), ("test", sizes[2], "")):
        for i in range(n):
            hot = i % 2
            rows.append(f"{_composition_sequence(rng, hot)},{(60.0 if hot else 40.0) + rng.uniform(-5, 5):.2f},"
                        f"{part},{flag}")
    folder = root / "protein" / "meltome"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}_split.csv").write_text("\n".join(rows) + "\n")
    return root


def make_hp_s_data(root, sizes=(20, 10)):
    """HP-S as the HotProtein release stores it (one FASTA file per protein under S_target/) with the split in
    JSON under the release pickle's keys. Five classes; composition separates the two hottest from the rest."""
    import json
    import random

    rng = random.Random(2)
    folder = root / "protein" / "hotprotein_s"
    (folder / "S_target").mkdir(parents=True, exist_ok=True)
    split = {}
    for part, n in zip(("train", "test"), sizes, strict=True):
        names, labels = [], []
        for i in range(n):
            name, label = f"{part}_{i}", i % 5
            (folder / "S_target" / f"{name}.fasta").write_text(
                f">{name}\n{_composition_sequence(rng, label >= 3)}\n")
            names.append(name)
            labels.append(float(label))  # the release stores labels as numbers read with float()
        split[f"{part}_names"], split[f"{part}_labels"] = names, labels
    (folder / "split.json").write_text(json.dumps(split))
    return root


def make_tiny_esm(path, num_labels=None):
    """A random-init 2-layer ESM-2-shaped model with ESM's tokenizer, saved as a local folder."""
    import torch
    from transformers import EsmConfig, EsmModel, EsmTokenizer

    from smcbench.tasks.protein.model import write_esm_vocab

    tokenizer = EsmTokenizer(str(write_esm_vocab(path)))
    torch.manual_seed(0)
    config = EsmConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id,
                       mask_token_id=tokenizer.mask_token_id, position_embedding_type="rotary", token_dropout=True)
    EsmModel(config, add_pooling_layer=False).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


TRANSLATION_WORDS = ("red", "blue", "cat", "dog", "runs", "sleeps", "big", "small", "a", "the", "house", "tree")


def synthetic_translation(lang, sentence):
    """The fixture's 'translation' of an English sentence into `lang`: each word spelled backwards with the
    language code appended (learnable by a tiny model; different for every language)."""
    return " ".join(w[::-1] + lang for w in sentence.split())


def make_translation_data(root, train=60, dev=8, flores=6, seed=0):
    """The translation layout of the data README, in its public formats (line-aligned text), with synthetic
    sentences: train/<xx>-en/{train,dev}.{xx,en} (no dev for gu), Tatoeba eng-rus, FLORES-200 devtest for all
    eleven languages."""
    import random

    from smcbench.tasks.translation.languages import ALL, LANGUAGES

    rng = random.Random(seed)

    def sentences(n):
        return [" ".join(rng.choice(TRANSLATION_WORDS) for _ in range(rng.randint(3, 6))) for _ in range(n)]

    folder = root / "translation"
    for lang in LANGUAGES:
        if lang == "ru":
            continue
        pair = folder / "train" / f"{lang}-en"
        pair.mkdir(parents=True, exist_ok=True)
        for part, n in (("train", train), ("dev", dev)):
            if part == "dev" and lang == "gu":
                continue
            en = sentences(n)
            (pair / f"{part}.en").write_text("\n".join(en) + "\n")
            (pair / f"{part}.{lang}").write_text("\n".join(synthetic_translation(lang, s) for s in en) + "\n")
    tatoeba = folder / "tatoeba" / "eng-rus"
    tatoeba.mkdir(parents=True, exist_ok=True)
    en = sentences(train + dev)
    (tatoeba / "tatoeba-test-v2021-08-07.eng").write_text("\n".join(en) + "\n")
    (tatoeba / "tatoeba-test-v2021-08-07.rus").write_text("\n".join(synthetic_translation("ru", s) for s in en) + "\n")
    devtest = folder / "flores200_devtest"
    devtest.mkdir(parents=True, exist_ok=True)
    en = sentences(flores)
    for lang, spec in ALL.items():
        text = en if lang == "en" else [synthetic_translation(lang, s) for s in en]
        (devtest / f"{spec.flores}.devtest").write_text("\n".join(text) + "\n")
    return root


def make_tiny_mbart(path, texts, d_model=32, layers=1):
    """A random-init mBART-shaped model with a SentencePiece vocabulary trained on `texts`, saved as a folder."""
    import torch
    from transformers import MBartConfig, MBartForConditionalGeneration

    from smcbench.tasks.translation.pretrain import build_tokenizer, train_vocabulary

    _, pieces = train_vocabulary(list(texts), vocab_size=200, seed=0)
    tokenizer = build_tokenizer(pieces)
    torch.manual_seed(0)
    eos = tokenizer.eos_token_id
    config = MBartConfig(vocab_size=len(tokenizer), d_model=d_model, encoder_layers=layers, decoder_layers=layers,
                         encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=2 * d_model,
                         decoder_ffn_dim=2 * d_model, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, decoder_start_token_id=eos,
                         forced_eos_token_id=eos, scale_embedding=True, dropout=0.0)
    MBartForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# Methods that prune every tensor to the level on its own (uniform allocation); the others rank globally.
UNIT_METHODS = {"structured"}
TINY_HEADS = 2  # tiny_bert_config's attention heads
PER_LAYER_METHODS = {"random_after", "random_before", "random_rigl", "wanda", "sparsegpt"}
# Settings that keep a method's test small (oBERT's defaults: 1,024 gradients per pruning step).
TINY_SETTINGS = {"obert": {"obert_gradients": 4, "obert_block": 8}}

# One method per code path of the runner and the methods, for the families other than commonsense (which runs every
# method): After (one-shot on the dense fine-tune), chained (LTH's rounds), during (GMP's gradual callback),
# Before + RigL (a mask on θ0, then dynamic updates), post-training (calibration, layer-wise), learned (extra
# per-weight parameters and a loss term), scratch (another run's mask, a fresh initialisation).
CODE_PATH_METHODS = ["omp_after", "lth", "gmp", "snip_rigl", "sparsegpt", "variational_dropout", "scratch_e"]


def assert_exact_sparsity(record, method):
    """The run pruned exactly its target: per layer for the per-layer methods (uniform allocation), over the whole
    selection for the others (global allocation)."""
    layers, target = record["layers"], record["target_sparsity"]
    if method in UNIT_METHODS:  # whole heads and neurons: the counts of sparsity.structured, per encoder layer
        from smcbench.sparsity.structured import counts

        for k in {layer["name"].split(".layer.")[1].split(".")[0] for layer in layers}:
            mine = {x["name"].split(f".layer.{k}.")[1]: x for x in layers if f".layer.{k}." in x["name"]}
            hidden = mine["attention.self.query.weight"]["shape"][1]
            neurons = mine["intermediate.dense.weight"]["shape"][0]
            h, n = counts(target, TINY_HEADS, 4 * hidden * hidden // TINY_HEADS, neurons, 2 * hidden)
            assert sum(x["pruned"] for x in mine.values()) == h * 4 * hidden * hidden // TINY_HEADS + n * 2 * hidden
        return
    if method in PER_LAYER_METHODS:
        assert all(layer["pruned"] == round(target * layer["numel"]) for layer in layers)
    else:
        assert sum(layer["pruned"] for layer in layers) == round(target * sum(layer["numel"] for layer in layers))


def csqa_request(tiny_model_path, data_root, out, method, sparsities, keep_weights="all", **settings):
    """One method on tiny CSQA files with the tiny model: 24 training questions, 6 updates of 4; every run keeps
    its weights (the tests read them)."""
    from smcbench.runner.single import RunRequest
    from smcbench.tasks import TaskSpec
    from smcbench.training import TrainConfig

    return RunRequest(TaskSpec("commonsense/csqa", tiny_model_path, str(data_root), train_size=24, val_size=8,
                               eval_size=8, max_length=32),
                      method, sparsities, TrainConfig(lr=1e-3, batch_size=4, max_steps=6, eval_every=3), settings,
                      out, progress=False, keep_weights=keep_weights)


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`smc-bench ARGS` in this process, as the console script runs it (one-line errors, exit status): the same
    code path as a subprocess without paying a fresh interpreter's imports each time. (status, stdout, stderr)."""
    import sys

    from smcbench.cli import main

    monkeypatch.setattr(sys, "argv", ["smc-bench", *args])
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = int(stop.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
