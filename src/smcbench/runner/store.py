"""The results database: SQLite, one row per finished run, keyed by the run's config hash.

Writes are single transactions (`INSERT OR IGNORE`): idempotent, atomic, and safe from several worker processes
(WAL journal, waiting on locks). A run's artefacts are complete before its row is written, so a row always means
a finished run.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from smcbench.errors import SmcBenchError
from smcbench.metrics import Metric

COLUMNS = {
    "run_id": "TEXT PRIMARY KEY",
    "task": "TEXT NOT NULL",
    "model": "TEXT NOT NULL",
    "method": "TEXT NOT NULL",
    "target_sparsity": "REAL NOT NULL",
    "achieved_sparsity": "REAL NOT NULL",
    "metric": "REAL",  # the value of the task's primary metric, named in metric_name
    "seed": "INTEGER NOT NULL",
    "wall_s": "REAL",
    "train_s": "REAL",
    "code_version": "TEXT",
    "finished_at": "TEXT",
    "dir": "TEXT",
    "record": "TEXT NOT NULL",  # the whole record as JSON: config, metrics, layers, notes
    "metric_name": "TEXT",  # added in schema 2 (ALTER TABLE on older databases)
}


class ResultStore:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, timeout=60)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"CREATE TABLE IF NOT EXISTS runs ({', '.join(f'{k} {v}' for k, v in COLUMNS.items())})")
            have = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
            for name in COLUMNS.keys() - have:  # a database written by an older version
                conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {COLUMNS[name]}")
        except sqlite3.DatabaseError as err:
            raise SmcBenchError(f"results database {str(self.path)!r} is not usable: {err}") from err
        return conn

    @staticmethod
    def _row(record: dict) -> dict:
        row = {k: record.get(k) for k in COLUMNS if k not in ("metric", "metric_name", "record")}
        metric = Metric.of(record)
        row["metric"] = record.get("metrics", {}).get(metric.name)
        row["metric_name"] = metric.name
        row["record"] = json.dumps(record, sort_keys=True)
        return row

    def append(self, record: dict) -> bool:
        """Add a finished run; False when a row with its run_id is already there (nothing changes)."""
        row = self._row(record)
        with closing(self._connect()) as conn, conn:
            cur = conn.execute(
                f"INSERT OR IGNORE INTO runs ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                list(row.values()),
            )
            return cur.rowcount == 1

    def replace(self, old_run_id: str | None, record: dict) -> None:
        """Swap the row of `old_run_id` (if any) for `record`, in one transaction (a run renamed by migration)."""
        row = self._row(record)
        with closing(self._connect()) as conn, conn:
            conn.execute("DELETE FROM runs WHERE run_id = ?", (old_run_id,))
            conn.execute(f"INSERT OR IGNORE INTO runs ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                         list(row.values()))

    def has(self, run_id: str) -> bool:
        with closing(self._connect()) as conn:
            return conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with closing(self._connect()) as conn:
            return [json.loads(r[0]) for r in conn.execute("SELECT record FROM runs ORDER BY rowid")]

    def rescan(self, root: str | os.PathLike) -> int:
        """Add every finished run found under `root` (its result.json) that the database lacks: the database
        can always be rebuilt from the run folders. Returns how many rows were added."""
        added = 0
        for path in sorted(Path(root).rglob("result.json")):
            if any(part.startswith(".") for part in path.parts):
                continue  # a run folder still being written
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if "run_id" in record:
                added += self.append(record)
        return added

    def _flat_rows(self, extra: dict[str, dict[str, Any]] | None = None) -> tuple[list[str], list[tuple]]:
        """The flat columns of every run, then `extra`'s columns (run id → values, e.g. the report's verdicts)."""
        names = [k for k in COLUMNS if k != "record"]
        with closing(self._connect()) as conn:
            rows = conn.execute(f"SELECT {', '.join(names)} FROM runs ORDER BY rowid").fetchall()
        if not extra:
            return names, rows
        added = list(dict.fromkeys(k for values in extra.values() for k in values))
        at = names.index("run_id")
        return names + added, [(*row, *(extra.get(row[at], {}).get(k) for k in added)) for row in rows]

    def export_csv(self, path: str | os.PathLike, extra: dict[str, dict[str, Any]] | None = None) -> int:
        """One line per run with the flat columns (and `extra`'s); returns the number of rows."""
        return export_csv([self], path, extra)

    def export_parquet(self, path: str | os.PathLike, extra: dict[str, dict[str, Any]] | None = None) -> int:
        """The flat columns plus the whole record (JSON text) as Parquet, in insertion order; needs pyarrow."""
        return export_parquet([self], path, extra)

    def _records_text(self) -> list[str]:
        with closing(self._connect()) as conn:
            return [r[0] for r in conn.execute("SELECT record FROM runs ORDER BY rowid")]


def _flat(stores: list[ResultStore], extra: dict[str, dict[str, Any]] | None) -> tuple[list[str], list[tuple]]:
    names: list[str] = []
    rows: list[tuple] = []
    for store in stores:
        names, some = store._flat_rows(extra)  # the same columns in every store: `extra` is keyed by run id
        rows += some
    return names, rows


def export_csv(stores: list[ResultStore], path: str | os.PathLike,
               extra: dict[str, dict[str, Any]] | None = None) -> int:
    """One line per run of every store, with the flat columns (and `extra`'s); returns the number of rows."""
    names, rows = _flat(stores, extra)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        writer.writerows(rows)
    return len(rows)


def export_parquet(stores: list[ResultStore], path: str | os.PathLike,
                   extra: dict[str, dict[str, Any]] | None = None) -> int:
    """The flat columns plus the whole record (JSON text) of every store's runs as Parquet; needs pyarrow."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise SmcBenchError("Parquet export needs pyarrow: pip install 'smc-bench[parquet]'") from err
    names, rows = _flat(stores, extra)
    columns = {n: [row[i] for row in rows] for i, n in enumerate(names)}
    columns["record"] = [text for store in stores for text in store._records_text()]
    pq.write_table(pa.table(columns), path)
    return len(rows)
