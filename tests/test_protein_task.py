"""The protein family end to end on tiny folds in the HotProtein formats, with tiny ESM models."""

import importlib.util
import json

import pytest
import torch

from helpers import CODE_PATH_METHODS, TINY_SETTINGS, assert_exact_sparsity, make_protein_data, make_tiny_esm
from smcbench.errors import SmcBenchError
from smcbench.runner.single import RunRequest, execute
from smcbench.tasks import TaskSpec, get_task
from smcbench.training import TrainConfig


@pytest.fixture(scope="module")
def protein_root(tmp_path_factory):
    return make_protein_data(tmp_path_factory.mktemp("protein-data"))


@pytest.fixture(scope="module")
def esm_path(tmp_path_factory):
    return str(make_tiny_esm(tmp_path_factory.mktemp("esm") / "tiny-esm"))


def spec(root, model, task="protein/hp-s2c2", **fields):
    return TaskSpec(task, model, str(root), val_size=2, fold=0, **fields)


def test_mean_pooling_ignores_padding_and_special_tokens(protein_root, esm_path):
    task = get_task(spec(protein_root, esm_path))
    model = task.initial_model().eval()
    train, _ = task.train_examples()
    rows = list(train[:4])
    batch = task.collate(rows)
    pooled = model.pool(batch["input_ids"], batch["attention_mask"], batch["residue_mask"])
    for i, f in enumerate(rows):  # one sequence at a time: no padding at all
        ids = torch.tensor([f.input_ids])
        states = model.backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
        assert torch.allclose(pooled[i], states[1:-1].mean(0), atol=1e-5)  # residues only: not <cls>, <eos>


def test_long_sequences_are_cut_and_counted(protein_root, esm_path):
    task = get_task(spec(protein_root, esm_path, options={"max_residues": 20}))
    train, lengths = task.train_examples()
    assert max(lengths) == 22  # 20 residues + <cls> + <eos>
    assert sum(f.cut for f in train) == len(train)  # every fixture sequence is longer than 20


def test_a_tiny_esm_learns_the_synthetic_composition_task(protein_root, esm_path, tmp_path):
    req = RunRequest(spec(protein_root, esm_path), "dense", [],
                     TrainConfig(lr=3e-3, batch_size=4, epochs=30, schedule="linear", eval_epochs=5), {}, tmp_path,
                     progress=False)
    [r] = execute(req)
    assert r["metrics"]["accuracy"] >= 0.9, r["metrics"]
    assert r["metric"]["chance"] == 0.5 and "macro_f1" in r["metrics"] and r["metrics"]["majority_rate"] == 0.5
    # The fixture's label is in the composition: the baseline from the data alone gets every test protein.
    assert r["metrics"]["composition_accuracy"] == 1.0
    assert r["metric"]["baselines"] == ["majority_rate", "composition_accuracy"]
    assert r["model_source"] == {"folder": esm_path}


def test_a_learning_rate_given_without_groups_is_told_that_the_backbone_keeps_the_tasks_rate(protein_root, esm_path):
    """Regression: the laptop track's protein part set lr 5e-4 and ran with ESM's default backbone rate, 1e-6,
    silently: its dense fine-tune moved each backbone tensor by a median 0.1 %."""
    from smcbench.runner.single import kept_groups_note, resolve

    s = spec(protein_root, esm_path)
    note = kept_groups_note(s, {"lr": 5e-4})
    assert "lr 0.0005 trains the parameters outside" in note and "'^backbone\\.' at 1e-06" in note
    assert resolve(s, {"lr": 5e-4})[1].lr_groups == ((r"^backbone\.", 1e-6),)  # what the note warns of
    assert kept_groups_note(s, {"lr": 5e-4, "lr_groups": ()}) == "" and resolve(s, {"lr_groups": ()})[1].lr_groups == ()
    assert kept_groups_note(s, {"batch_size": 4}) == ""


def test_the_composition_baseline_reads_residue_frequencies_and_is_symmetric_in_the_classes():
    import random

    from helpers import _composition_sequence
    from smcbench.tasks.protein.baseline import RESIDUES, composition_predictions, frequencies

    assert frequencies(["AAC", "XY"]).tolist()[0][:2] == [2 / 3, 1 / 3]  # shares of the length, B/X/Z count there
    assert frequencies(["XY"]).sum().item() == 0.5 and len(RESIDUES) == 20
    rng = random.Random(1)
    labels = [i % 2 for i in range(60)]
    sequences = [_composition_sequence(rng, label) for label in labels]
    predicted = composition_predictions(sequences[:40], labels[:40], sequences[40:], 2)
    assert predicted == labels[40:]
    # Relabelling the classes relabels the predictions, on noisy labels too (L-BFGS from zeros has no preferred class).
    noisy = [label if rng.random() < 0.7 else 1 - label for label in labels[:40]]
    flipped = composition_predictions(sequences[:40], [1 - y for y in noisy], sequences[40:], 2)
    assert flipped == [1 - y for y in composition_predictions(sequences[:40], noisy, sequences[40:], 2)]


@pytest.mark.parametrize("method", CODE_PATH_METHODS)
def test_every_code_path_prunes_exactly_the_esm_selection(protein_root, esm_path, code_path_out, method):
    req = RunRequest(spec(protein_root, esm_path), method, [0.2, 0.36],
                     TrainConfig(lr=1e-3, batch_size=4, max_steps=4, eval_every=2), TINY_SETTINGS.get(method, {}),
                     code_path_out, progress=False)
    records = execute(req)
    for r in records:
        names = [layer["name"] for layer in r["layers"]]
        assert len(names) == 12 and all(".layer." in n for n in names)  # the family's default preset: esm
        assert r["config"]["settings"]["preset"] == "esm"
        assert_exact_sparsity(r, method)


def test_esm_tiny_is_pretrained_with_the_fold_held_out_and_refuses_a_leaked_fold(protein_root, tmp_path,
                                                                                 monkeypatch):
    from smcbench.tasks.protein.pretrain import RECORD, ensure_tiny, hotprotein_corpus, tiny_folder

    monkeypatch.setenv("SMCBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(__import__("smcbench.tasks.protein.pretrain", fromlist=["x"]).PRETRAIN_DEFAULTS, "steps", 3)
    folder = ensure_tiny("heldout-0", lambda: hotprotein_corpus(protein_root, (0,)), "smc-bench pretrain esm-tiny")
    record = json.loads((folder / RECORD).read_text())
    assert record["held_out_folds"] == [0] and len(record["held_out_sequences"]) == 2 * 2  # S2C2 + S2C5 tests
    assert record["corpus_sequences"] == 2 * 10 * 10 - 4
    task = get_task(spec(protein_root, "esm-tiny"))
    assert task.model_path == str(folder)
    model = task.initial_model()  # a normal transformers folder: EsmModel loads from the masked-LM checkpoint
    assert model.backbone.config.hidden_size == 128
    # A model pretrained with fold 0 held out cannot be evaluated on fold 1's test sequences.
    leaked = get_task(TaskSpec("protein/hp-s2c2", str(folder), str(protein_root), val_size=2, fold=1))
    with pytest.raises(SmcBenchError, match="pretrained on 2 test sequence"):
        leaked.train_examples()
    assert tiny_folder("heldout-1") != folder


def test_a_tape_checkpoint_converts_to_a_bert_folder_and_runs(protein_root, tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    from smcbench.tasks.protein.tape import TAPE_CONFIG, convert_tape

    small = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
             "max_position_embeddings": 128}
    torch.manual_seed(3)
    released = BertForMaskedLM(BertConfig(**{**TAPE_CONFIG, **small}))
    torch.save(released.state_dict(), tmp_path / "pytorch_model.bin")  # tensors only, as TAPE's release
    folder = convert_tape(tmp_path, tmp_path / "tape", **small)
    task = get_task(spec(protein_root, str(folder)))
    model = task.initial_model()
    ours = dict(model.backbone.named_parameters())
    for name, value in released.bert.named_parameters():
        assert torch.equal(ours[name], value), name
    assert task.train_defaults()["warmup_steps"] == 100 and task.train_defaults()["epochs"] == 4.0  # TAPE's setting
    train, _ = task.train_examples()
    batch = task.collate(list(train[:2]))
    assert batch["input_ids"][0, 0] == 2 and not batch["residue_mask"][:, 0].any()  # <cls> is not a residue
    req = RunRequest(spec(protein_root, str(folder)), "omp_before", [0.5], TrainConfig(lr=1e-3, batch_size=4,
                     max_steps=2), {}, tmp_path / "runs", progress=False)
    [r] = execute(req)
    assert len(r["layers"]) == 12
    assert_exact_sparsity(r, "omp_before")


def test_a_non_tensor_checkpoint_is_refused(tmp_path):
    from pathlib import PurePosixPath

    from smcbench.tasks.protein.tape import convert_tape

    # Any object beyond tensors and plain containers is refused by the tensors-only loader.
    torch.save({"bert.x": torch.zeros(1), "note": PurePosixPath("x")}, tmp_path / "model.bin")
    with pytest.raises(SmcBenchError, match="not a tensors-only PyTorch checkpoint"):
        convert_tape(tmp_path / "model.bin", tmp_path / "out")


@pytest.fixture(scope="module")
def single_split_root(tmp_path_factory):
    from helpers import make_hp_s_data, make_meltome_data

    root = tmp_path_factory.mktemp("single-split")
    return make_hp_s_data(make_meltome_data(root))


def test_meltome_selects_on_flips_validation_rows_and_records_its_class_boundaries(single_split_root, esm_path,
                                                                                  tmp_path):
    task = get_task(TaskSpec("protein/meltome", esm_path, str(single_split_root)))
    assert task.classes == 2 and task.boundaries[0] == pytest.approx(50, abs=6)  # the training median
    pool, val = task.training_and_validation()
    assert (len(pool), len(val)) == (24, 6)  # FLIP's validation rows, never the test split
    req = RunRequest(TaskSpec("protein/meltome", esm_path, str(single_split_root)), "dense", [],
                     TrainConfig(lr=3e-3, batch_size=4, epochs=20, schedule="linear", eval_epochs=5), {}, tmp_path,
                     progress=False)
    [r] = execute(req)
    assert r["metrics"]["accuracy"] >= 0.8, r["metrics"]
    assert r["data"]["class_boundaries_c"] == [task.boundaries[0]]
    assert "the training median" in r["data"]["notes"][0]


def test_meltome_thresholds_make_more_classes_and_bad_ones_are_refused(single_split_root, esm_path):
    three = get_task(TaskSpec("protein/meltome", esm_path, str(single_split_root),
                              options={"tm_thresholds": "42,58"}))
    assert three.classes == 3 and three.metric.chance == pytest.approx(1 / 3)
    assert {p.label for p in three.read("train")} == {0, 1, 2}
    with pytest.raises(SmcBenchError, match="tm_thresholds: .*distinct and increasing"):
        get_task(TaskSpec("protein/meltome", esm_path, str(single_split_root), options={"tm_thresholds": "55,45"}))


def test_hp_s_runs_five_classes_from_the_release_layout(single_split_root, esm_path, tmp_path):
    req = RunRequest(TaskSpec("protein/hp-s", esm_path, str(single_split_root), val_size=5), "omp_after", [0.5],
                     TrainConfig(lr=1e-3, batch_size=4, max_steps=4, eval_every=2), {}, tmp_path, progress=False)
    [r] = execute(req)
    assert r["metric"]["chance"] == 0.2
    assert_exact_sparsity(r, "omp_after")
    assert r["metrics"]["eval_examples"] == 10


def test_esm_tiny_for_a_single_split_task_pretrains_on_its_training_split_only(single_split_root, tmp_path,
                                                                               monkeypatch):
    from smcbench.tasks.protein.pretrain import RECORD, sequence_key

    monkeypatch.setenv("SMCBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(__import__("smcbench.tasks.protein.pretrain", fromlist=["x"]).PRETRAIN_DEFAULTS, "steps", 2)
    task = get_task(TaskSpec("protein/meltome", "esm-tiny", str(single_split_root)))
    folder = task.model_path
    assert folder.endswith("esm-tiny-meltome-mixed")
    record = json.loads((tmp_path / "cache" / "models" / "esm-tiny-meltome-mixed" / RECORD).read_text())
    test_keys = {sequence_key(p.sequence) for p in task.read("test")}
    assert record["corpus_sequences"] == 30 and test_keys <= set(record["held_out_sequences"])
    task.train_examples()  # the leak check passes: every test sequence was held out


def test_pretrain_command_builds_the_corpus_of_the_chosen_task(single_split_root, tmp_path, monkeypatch, capsys):
    from helpers import run_cli

    out = tmp_path / "tiny"
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "esm-tiny", "--task", "protein/hp-s", "--steps", "1",
                           "--data-dir", str(single_split_root), "--out", str(out))
    assert code == 0, err
    record = json.loads((out / "smcbench_pretraining.json").read_text())
    assert record["corpus_name"] == "hp-s" and record["corpus_sequences"] == 20
    code, _, err = run_cli(monkeypatch, capsys, "pretrain", "esm-tiny", "--task", "protein/hp-s", "--exclude-folds",
                           "1", "--data-dir", str(single_split_root), "--out", str(out))
    assert code == 2 and "has no folds" in err


def test_antiberty_converts_from_its_package_files_and_says_its_domain(protein_root, tmp_path, monkeypatch):
    """A stand-in for the PyPI package's files (same layout, a small BERT with AntiBERTy's heads): the encoder and
    masked-LM head are kept exactly, the species head is dropped, and every run's data notes state the domain."""
    from transformers import BertConfig, BertForMaskedLM

    from smcbench.tasks.protein import antiberty

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"ACDEFGHIKLMNPQRSTVWY"]
    config = {"model_type": "bert", "architectures": ["AntiBERTy"], "vocab_size": 25, "hidden_size": 16,
              "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
              "max_position_embeddings": 64, "type_vocab_size": 2, "pad_token_id": 0}
    torch.manual_seed(5)
    released = BertForMaskedLM(BertConfig(**config))
    state = {**released.state_dict(), "cls.species.weight": torch.zeros(6, 16), "cls.species.bias": torch.zeros(6)}
    files = (tmp_path / "pkg" / "pytorch_model.bin", tmp_path / "pkg" / "config.json", tmp_path / "pkg" / "vocab.txt")
    files[0].parent.mkdir()
    torch.save(state, files[0])
    files[1].write_text(json.dumps(config))
    files[2].write_text("\n".join(vocab) + "\n")
    monkeypatch.setattr(antiberty, "package_files", lambda: files)
    monkeypatch.setenv("SMCBENCH_CACHE", str(tmp_path / "cache"))
    task = get_task(spec(protein_root, "antiberty"))
    assert task.train_defaults()["lr"] == 1e-4  # a BERT: TAPE's fine-tuning setting
    ours = dict(task.initial_model().backbone.named_parameters())
    for name, value in released.bert.named_parameters():
        assert torch.equal(ours[name], value), name
    train, _ = task.train_examples()
    batch = task.collate(list(train[:2]))
    assert batch["input_ids"][0, 0] == 2 and (batch["input_ids"][0, 1:5] >= 5).all()  # [CLS], then residues
    assert task.max_residues == 62  # 64 positions less [CLS] and [SEP]
    [r] = execute(RunRequest(spec(protein_root, "antiberty"), "gmp", [0.5], TrainConfig(lr=1e-3, batch_size=4,
                             max_steps=2), {}, tmp_path / "runs", progress=False))
    assert antiberty.DOMAIN_NOTE in r["data"]["notes"]
    assert r["model_source"]["pretraining"]["model"] == "antiberty"
    assert_exact_sparsity(r, "gmp")


@pytest.mark.skipif(importlib.util.find_spec("antiberty") is None,
                    reason="antiberty is not installed (make setup: pip install --no-deps antiberty==0.1.3)")
def test_the_installed_antiberty_package_has_the_published_model():
    from smcbench.tasks.protein import antiberty

    checkpoint, config, vocab = antiberty.package_files()
    assert json.loads(config.read_text())["num_hidden_layers"] == 8 and len(vocab.read_text().split()) == 25
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert sum(v.numel() for k, v in state.items() if not k.endswith("position_ids")) > 25_000_000
