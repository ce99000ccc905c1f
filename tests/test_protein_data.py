"""Protein groundwork (issue 9): HotProtein readers on fixtures in the public formats, the real files when present,
and the `esm` selection preset with the module-ablation regexes of the paper's Table 1."""

from collections import Counter
from pathlib import Path

import pytest

from smcbench.errors import SmcBenchError
from smcbench.sparsity.selection import select_prunable
from smcbench.tasks.protein.data import S2C5_CLASSES, read_fasta, read_s2c2, read_s2c5

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
