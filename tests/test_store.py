import csv
import multiprocessing as mp

import pytest

from smcbench.errors import SmcBenchError
from smcbench.runner.store import ResultStore


def record(i, method="omp_after"):
    return {"run_id": f"id{i}", "task": "commonsense/csqa", "model": "minilm", "method": method,
            "target_sparsity": 0.2, "achieved_sparsity": 0.2, "metrics": {"accuracy": 0.3 + i / 100}, "seed": 0,
            "wall_s": 1.0, "train_s": 0.5, "finished_at": f"2026-01-01T00:00:{i:02d}Z", "layers": []}


def test_writes_are_idempotent(tmp_path):
    store = ResultStore(tmp_path / "r.db")
    assert store.append(record(1)) is True
    assert store.append(record(1)) is False
    assert [r["run_id"] for r in store.records()] == ["id1"]
    assert store.has("id1") and not store.has("id2")


def _write_many(path, start):
    store = ResultStore(path)
    for i in range(start, start + 25):
        store.append(record(i))


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "r.db"
    procs = [mp.get_context("spawn").Process(target=_write_many, args=(path, k * 25)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert sorted(r["run_id"] for r in ResultStore(path).records()) == sorted(f"id{i}" for i in range(100))


def test_csv_export(tmp_path):
    store = ResultStore(tmp_path / "r.db")
    store.append(record(1))
    store.append(record(2, "gmp"))
    assert store.export_csv(tmp_path / "r.csv") == 2
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert {r["method"] for r in rows} == {"omp_after", "gmp"}
    assert float(rows[0]["metric"]) == pytest.approx(0.31)


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    (tmp_path / "r.db").write_text("not sqlite at all, just text that is long enough to have a header")
    with pytest.raises(SmcBenchError, match="not usable"):
        ResultStore(tmp_path / "r.db").append(record(1))


def test_parquet_export(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="the parquet extra is not installed")
    store = ResultStore(tmp_path / "r.db")
    store.append(record(1))
    store.append(record(2, "gmp"))
    assert store.export_parquet(tmp_path / "r.parquet") == 2
    table = pq.read_table(tmp_path / "r.parquet")
    assert table.column("method").to_pylist() == ["omp_after", "gmp"]
    assert '"accuracy": 0.32' in table.column("record").to_pylist()[1]
