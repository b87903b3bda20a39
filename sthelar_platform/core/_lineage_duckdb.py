"""The embedded lineage backend: one DuckDB file, merged into by one process at a time (OS file lock)."""

from __future__ import annotations

import contextlib
import random
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb

from sthelar_platform.core._lineage_schema import SCHEMA
from sthelar_platform.core.atomic import file_lock


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict[str, Any]]) -> None:
    """Bulk insert through a registered DataFrame (thousands of rows in one statement), skipping known event ids."""
    import pandas as pd

    if not rows:
        return
    cols = [c for c, _ in SCHEMA[table] if any(c in r for r in rows)]
    frame = pd.DataFrame(rows, columns=cols, dtype=object)
    frame = frame.where(frame.notna(), None)  # NaN (an undefined metric) is stored as NULL
    con.register("_incoming_rows", frame)
    try:
        con.execute(f"INSERT OR IGNORE INTO {table} ({', '.join(cols)}) SELECT {', '.join(cols)} FROM _incoming_rows")
    finally:
        with contextlib.suppress(duckdb.Error):  # in an aborted transaction: keep the insert's own error
            con.unregister("_incoming_rows")


def create_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create missing tables and add columns that a newer platform version introduced.

    One count query decides whether anything is missing: a merge runs on every record.
    """
    counted = con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name IN "
                          f"({', '.join('?' for _ in SCHEMA)})", list(SCHEMA)).fetchone()
    have = counted[0] if counted else 0
    if have == sum(len(cols) for cols in SCHEMA.values()):
        return
    for table, cols in SCHEMA.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(f'{c} {t}' for c, t in cols)})")
        have = {r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]).fetchall()}
        for c, t in cols:
            if c not in have:
                con.execute(f"ALTER TABLE {table} ADD COLUMN {c} {t.replace(' PRIMARY KEY', '')}")


class DuckDBBackend:
    """``lineage.duckdb`` and its lock file; readers get snapshots, never the live file."""

    def __init__(self, db_path: Path, lock_timeout_s: float):
        self.db_path = db_path
        self.lock_path = db_path.parent / f"{db_path.name}.lock"
        self.lock_timeout_s = lock_timeout_s

    @contextlib.contextmanager
    def _locked(self) -> Iterator[bool]:
        with file_lock(self.lock_path, self.lock_timeout_s) as got:
            yield got

    def _connect(self, read_only: bool = False) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                return duckdb.connect(str(self.db_path), read_only=read_only)
            except duckdb.IOException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.05, 0.2))

    def merge(self, payloads: dict[Path, dict[str, Any]], quarantine: Callable[[Path, str], None]) -> list[Path]:
        """Insert every payload in one transaction; a payload the database refuses is quarantined, the rest retried."""
        with self._locked() as got:
            if not got:
                return []
            try:
                con = self._connect()
            except duckdb.IOException:
                return []  # another process (dbt, a dashboard) holds the database; retry later
            payloads = dict(payloads)
            try:
                create_tables(con)
                while payloads:
                    con.execute("BEGIN TRANSACTION")
                    current: Path | None = None
                    try:
                        for current, payload in payloads.items():
                            rows = payload["rows"] if "rows" in payload else [payload["row"]]
                            insert_rows(con, payload["table"], rows)
                        con.execute("COMMIT")
                        break
                    except duckdb.IOException:  # the disk, not the rows (full, read-only): they wait in the spool
                        con.execute("ROLLBACK")
                        return []
                    except duckdb.Error as exc:  # one file's values were refused: set it aside, merge the rest
                        con.execute("ROLLBACK")
                        if current is None:  # the transaction itself failed, before any file: retry later
                            return []
                        quarantine(current, f"{type(exc).__name__}: {exc}")
                        payloads.pop(current)
            finally:
                con.close()
            return list(payloads)

    def query(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        if not self.db_path.exists():
            con = self._connect()
            create_tables(con)
            con.close()
        with self._locked():
            con = self._connect(read_only=True)
            try:
                cur = con.execute(sql, params)
                names = [d[0] for d in cur.description]
                return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
            finally:
                con.close()

    def snapshot(self, dest: Path) -> None:
        """Checkpoint and copy the file under the writers' lock."""
        with self._locked() as got:
            if not got:
                raise TimeoutError(f"lineage database {self.db_path} stayed locked for {self.lock_timeout_s}s")
            con = self._connect()
            try:
                create_tables(con)
                con.execute("CHECKPOINT")
            finally:
                con.close()
            shutil.copyfile(self.db_path, dest)
