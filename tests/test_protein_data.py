"""Protein groundwork (issue 9): HotProtein readers on fixtures in the public formats, the real files when present,
and the `esm` selection preset with the module-ablation regexes of the paper's Table 1."""

from collections import Counter
from pathlib import Path

import pytest

from smcbench.errors import SmcBenchError
from smcbench.sparsity.selection import select_prunable
from smcbench.tasks.protein.data import (
    S2C5_CLASSES,
    meltome_classes,
    meltome_label,
    read_fasta,
    read_hp_s,
    read_meltome,
    read_s2c2,
    read_s2c5,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_s2c2(root, rows, fasta):
    folder = root / "protein" / "hotprotein_s2c2"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sequences.fasta").write_text(fasta)
    (folder / "folds.csv").write_text("fold,split,uniprot_id,label,growth_temp_c\n" + "".join(rows))
    return root


FASTA = (">tr|P1|P1_X Some protein OS=Thermus\nMKVL\nAAG\n"
         ">sp|P2|P2_Y Other\nMSTNPKPQR\n")


def test_fasta_ids_are_the_accessions_and_lines_join(tmp_path):
    write_s2c2(tmp_path, [], FASTA)
    assert read_fasta(tmp_path / "protein" / "hotprotein_s2c2" / "sequences.fasta") == {"P1": "MKVLAAG",
                                                                                        "P2": "MSTNPKPQR"}


@pytest.mark.parametrize("fasta, message", [
    ("MKVL\n>tr|P1|X\nMK\n", "sequences.fasta:1: sequence line before the first '>' header"),
    (">tr|P1|X\nMK\n>tr|P1|X\nMA\n", "sequences.fasta:3: id 'P1' appears twice"),
    (">tr|P1|X\nMK1L\n", "sequences.fasta:1 (P1): not an amino-acid sequence"),
    (">tr|P1|X\n>tr|P2|Y\nMK\n", "sequences.fasta:1 (P1): empty sequence"),
])
def test_bad_fasta_is_a_clear_error_naming_file_and_line(tmp_path, fasta, message):
    write_s2c2(tmp_path, [], fasta)
    with pytest.raises(SmcBenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_fasta(tmp_path / "protein" / "hotprotein_s2c2" / "sequences.fasta")


def test_s2c2_folds_select_split_and_label(tmp_path):
    write_s2c2(tmp_path, ["0,train,P1,1,80.0\n", "0,test,P2,0,20.0\n", "1,train,P2,0,20.0\n"], FASTA)
    [p] = read_s2c2(tmp_path, 0, "train")
    assert (p.uid, p.sequence, p.label) == ("P1", "MKVLAAG", 1)
    assert [q.uid for q in read_s2c2(tmp_path, 1, "train")] == ["P2"]
    with pytest.raises(SmcBenchError, match="no test rows for fold 1"):
        read_s2c2(tmp_path, 1, "test")


@pytest.mark.parametrize("row, message", [
    ("0,train,P9,1,80.0\n", "folds.csv:2: 'P9' has no sequence"),
    ("0,train,P1,2,80.0\n", "folds.csv:2: HP-S2C2 labels are 0 or 1"),
    ("0,valid,P1,1,80.0\n", "folds.csv:2: split must be train or test"),
    ("x,train,P1,1,80.0\n", "folds.csv:2: fold and label must be integers"),
    ("0,train,P1\n", "folds.csv:2: malformed row"),
])
def test_bad_fold_rows_are_clear_errors(tmp_path, row, message):
    write_s2c2(tmp_path, [row], FASTA)
    with pytest.raises(SmcBenchError, match=message):
        read_s2c2(tmp_path, 0, "train")


def test_missing_files_say_where_the_data_goes(tmp_path):
    with pytest.raises(SmcBenchError, match="pass --data-dir"):
        read_s2c2(tmp_path, 0, "train")


def test_s2c5_groups_seven_temperatures_into_five_classes(tmp_path):
    folder = tmp_path / "protein" / "hotprotein_s2c5"
    folder.mkdir(parents=True)
    rows = [f"G{i},MKV,{t},train,False\n" for i, t in enumerate(S2C5_CLASSES)]
    (folder / "s2c5_3_train.csv").write_text("gene,sequence,tgt_reg,set,validation\n" + "".join(rows))
    assert [p.label for p in read_s2c5(tmp_path, 3, "train")] == [0, 1, 1, 2, 3, 4, 4]
    (folder / "s2c5_3_test.csv").write_text("gene,sequence,tgt_reg,set,validation\nG,MKV,50,test,False\n")
    with pytest.raises(SmcBenchError, match="s2c5_3_test.csv:2: growth temperature 50.0 is not one of"):
        read_s2c5(tmp_path, 3, "test")


@pytest.mark.skipif(not (SHARED / "protein").is_dir(), reason="the HotProtein data (../shared/data/protein) is "
                    "not on this machine")
def test_the_real_files_give_the_papers_counts():
    s2c2 = read_s2c2(SHARED, 0, "train") + read_s2c2(SHARED, 0, "test")
    assert len(s2c2) == 1965 and Counter(p.label for p in s2c2) == {0: 1237, 1: 728}
    s2c5 = read_s2c5(SHARED, 0, "train") + read_s2c5(SHARED, 0, "test")
    # The paper's five classes: Cryophilic 73, Psychrophilic 387, Mesophilic 195, Thermophilic 196, Hyper 189.
    assert Counter(p.label for p in s2c5) == {0: 73, 1: 387, 2: 195, 3: 196, 4: 189}
    train_ids = {p.uid for p in read_s2c2(SHARED, 0, "train")}
    assert train_ids.isdisjoint(p.uid for p in read_s2c2(SHARED, 0, "test"))


def write_meltome(root, rows, split="mixed"):
    folder = root / "protein" / "meltome"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}_split.csv").write_text("sequence,target,set,validation\n" + "".join(rows))


def test_meltome_reads_flips_columns_and_validation_flags(tmp_path):
    write_meltome(tmp_path, ["MKVL,41.5,train,False\n", "mkvJ*,60.1,train,True\n", "MAAG,55,test,\n"])
    train = read_meltome(tmp_path, "mixed", "train")
    assert [(r.sequence, r.melting_c, r.validation) for r in train] == [("MKVL", 41.5, False),
                                                                         ("MKVX", 60.1, True)]  # J -> X, stop dropped
    assert [r.sequence for r in read_meltome(tmp_path, "mixed", "test")] == ["MAAG"]


@pytest.mark.parametrize("row, message", [
    ("MKVL,hot,train,False\n", "mixed_split.csv:2: target must be a melting temperature"),
    ("MK1L,40,train,False\n", "mixed_split.csv:2: not an amino-acid sequence"),
    ("MKVL,40,valid,False\n", "mixed_split.csv:2: set must be train or test"),
    ("MKVL,40,train,maybe\n", "mixed_split.csv:2: validation must be True or False"),
    ("MKVL,40\n", "mixed_split.csv:2: malformed row"),
])
def test_bad_meltome_rows_are_clear_errors(tmp_path, row, message):
    write_meltome(tmp_path, [row])
    with pytest.raises(SmcBenchError, match=message):
        read_meltome(tmp_path, "mixed", "train")


def test_missing_meltome_names_the_file_and_where_to_get_it(tmp_path):
    with pytest.raises(SmcBenchError, match=r"meltome/mixed_split.csv.*FLIP's splits/meltome/splits.zip"):
        read_meltome(tmp_path, "mixed", "train")


def test_meltome_classes_default_to_the_training_median_and_boundaries_go_hotter(tmp_path):
    write_meltome(tmp_path, [f"MKVL,{t},train,False\n" for t in (40, 45, 50, 70)])
    train = read_meltome(tmp_path, "mixed", "train")
    assert meltome_classes(train, None) == (47.5,)
    assert meltome_classes(train, (60.0, 50.0)) == (50.0, 60.0)
    assert [meltome_label(t, (50.0, 60.0)) for t in (49.9, 50.0, 59.9, 60.0, 90)] == [0, 1, 1, 2, 2]


def write_hp_s(root, split_json=None, split_csv=None, files=None):
    folder = root / "protein" / "hotprotein_s"
    (folder / "S_target").mkdir(parents=True, exist_ok=True)
    for name, text in (files or {"a": ">a\nMKV\nLL\n", "b": ">b\nMAAG\n"}).items():
        (folder / "S_target" / f"{name}.fasta").write_text(text)
    if split_json is not None:
        (folder / "split.json").write_text(split_json)
    if split_csv is not None:
        (folder / "split.csv").write_text(split_csv)
    return folder


def test_hp_s_reads_the_release_layout_with_its_split_as_json_or_csv(tmp_path):
    write_hp_s(tmp_path, split_json='{"train_names": ["a"], "train_labels": [4.0], "test_names": ["b"], '
                                    '"test_labels": [0]}')
    assert [(p.uid, p.sequence, p.label) for p in read_hp_s(tmp_path, "train")] == [("a", "MKVLL", 4)]
    assert [p.label for p in read_hp_s(tmp_path, "test")] == [0]
    other = tmp_path / "csv"
    write_hp_s(other, split_csv="name,label,split\na,2,train\nb,3,test\n")
    assert [(p.uid, p.label) for p in read_hp_s(other, "test")] == [("b", 3)]


@pytest.mark.parametrize("split_json, message", [
    ('{"train_names": ["a"], "train_labels": [5], "test_names": [], "test_labels": []}',
     r"split.json \(train_names\[0\]\): HP-S labels are 0..4"),
    ('{"train_names": ["zz"], "train_labels": [1], "test_names": [], "test_labels": []}',
     r"split.json \(train_names\[0\]\): no sequence file .*zz.fasta"),
    ('{"train_names": ["a", "b"], "train_labels": [1]}', "train_names has 2 entries but train_labels has 1"),
    ('{"names": []}', "needs lists 'train_names' and 'train_labels'"),
    ('{"train_names": [', "split.json:1: not valid JSON"),
])
def test_bad_hp_s_splits_are_clear_errors(tmp_path, split_json, message):
    write_hp_s(tmp_path, split_json=split_json)
    with pytest.raises(SmcBenchError, match=message):
        read_hp_s(tmp_path, "train")


def test_hp_s_never_loads_the_release_pickle_and_says_how_to_convert_it(tmp_path):
    folder = write_hp_s(tmp_path)
    (folder / "S_target_classification.pkl").write_bytes(b"\x80\x04not loaded")
    with pytest.raises(SmcBenchError, match="S_target_classification.pkl is a pickle, which smc-bench never loads"):
        read_hp_s(tmp_path, "train")


def tiny_esm():
    from transformers import EsmConfig, EsmForSequenceClassification

    return EsmForSequenceClassification(EsmConfig(vocab_size=33, hidden_size=16, num_hidden_layers=2,
                                                  num_attention_heads=2, intermediate_size=32, pad_token_id=1,
                                                  max_position_embeddings=64, num_labels=2))


def test_esm_preset_selects_exactly_attention_and_feed_forward_weights():
    model = tiny_esm()
    names = set(select_prunable(model, "esm"))
    expected = {f"esm.encoder.layer.{k}.{m}.weight" for k in range(2)
                for m in ("attention.self.query", "attention.self.key", "attention.self.value",
                          "attention.output.dense", "intermediate.dense", "output.dense")}
    assert names == expected  # no embeddings, contact or classification head, no norms or biases
    # Table 1's module subsets are regexes on top of it, e.g. Q and K only:
    qk = select_prunable(model, "esm", include=[r"attention\.self\.(query|key)\."])
    assert {n.split(".")[-2] for n in qk} == {"query", "key"} and len(qk) == 4
