import json
from pathlib import Path

import pytest
import torch

from smcbench.errors import SmcBenchError
from smcbench.tasks import TaskSpec, get_task, known_tasks
from smcbench.tasks.commonsense.data import read_csqa, read_race, read_winogrande

REAL_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
needs_real_data = pytest.mark.skipif(
    not (REAL_DATA / "commonsense").is_dir(), reason="real data not present at ../shared/data (read-only, not in repo)"
)


def test_registry_lists_the_commonsense_datasets():
    assert {"commonsense/csqa", "commonsense/winogrande", "commonsense/race-m", "commonsense/race-h"} <= set(
        known_tasks()
    )
    with pytest.raises(SmcBenchError, match="unknown task 'commonsense/csqb'"):
        get_task(TaskSpec("commonsense/csqb"))


def test_csqa_pairs_the_question_with_each_choice(data_root):
    rows = read_csqa(data_root, "train")
    assert len(rows) == 48 and len(rows[0].choices) == 5
    assert rows[1].label == 1  # answerKey B
    assert rows[0].choices[0].first.startswith("where would you find")


def test_winogrande_substitutes_each_option_at_the_blank(data_root):
    row = read_winogrande(data_root, "train", "xs")[0]
    assert row.choices[0].first == "The river was bigger than the cup so river"
    assert row.choices[1].first.endswith("so cup")
    assert row.choices[0].second == "broke."
    assert row.label == 0


def test_race_puts_the_option_in_the_question(data_root):
    rows = read_race(data_root, "train", "middle")
    assert len(rows) == 24
    assert rows[1].choices[0].second == "The thing is red."
    assert rows[0].choices[2].second == "What does Tom have? a hat"
    assert rows[0].choices[0].first.startswith("Tom has a")


def test_malformed_rows_and_missing_files_are_clear_errors(tmp_path):
    path = tmp_path / "commonsense" / "csqa" / "train_data.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"question": {"stem": "q", "choices": []}, "answerKey": "A"}) + "\n")
    with pytest.raises(SmcBenchError, match=r"train_data.jsonl:1: malformed CSQA row"):
        read_csqa(tmp_path, "train")
    path.write_text("{oops\n")
    with pytest.raises(SmcBenchError, match=r"train_data.jsonl:1: not valid JSON"):
        read_csqa(tmp_path, "train")
    with pytest.raises(SmcBenchError, match="pass --data-dir"):
        read_csqa(tmp_path, "dev")
    with pytest.raises(SmcBenchError, match="unknown WinoGrande train size"):
        read_winogrande(tmp_path, "train", "xxl")


def test_validation_is_carved_from_training_data_and_never_from_the_evaluation_split(data_root, tiny_model_path):
    task = get_task(TaskSpec("commonsense/csqa", tiny_model_path, str(data_root), train_size=20, val_size=8))
    train, lengths = task.train_examples()
    val = task._splits[1]
    ev = task._eval
    assert len(train) == 20 and len(val) == 8 and len(ev) == 16
    as_key = lambda f: tuple(map(tuple, f["input_ids"]))  # noqa: E731
    assert not {as_key(f) for f in val} & {as_key(f) for f in ev}
    assert not {as_key(f) for f in val} & {as_key(f) for f in train}
    assert lengths == [max(len(x) for x in f["input_ids"]) for f in train]


def test_collate_pads_to_the_longest_choice_in_the_batch(data_root, tiny_model_path):
    task = get_task(TaskSpec("commonsense/winogrande", tiny_model_path, str(data_root),
                             options={"train_variant": "xs"}))
    train, lengths = task.train_examples()
    batch = task.collate(list(train[:4]))
    assert batch["input_ids"].shape == (4, 2, max(lengths[:4]))
    assert batch["labels"].tolist() == [0, 1, 0, 1]
    assert torch.equal(batch["attention_mask"].sum(-1) > 0, torch.ones(4, 2, dtype=torch.bool))


@needs_real_data
def test_real_commonsense_data_loads_with_the_documented_sizes():
    assert len(read_csqa(REAL_DATA, "train")) == 9741
    assert len(read_csqa(REAL_DATA, "dev")) == 1221
    assert len(read_winogrande(REAL_DATA, "dev")) == 1267
    assert len(read_race(REAL_DATA, "dev", "middle")) == 1436
