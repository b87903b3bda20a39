"""Lineage and QC records in DuckDB, safe with many writer processes.

DuckDB allows one read-write process per database file. Each record is first written
as a JSON spool file (atomic rename, so it is durable the moment ``record`` returns),
then merged into the database under an OS file lock with ``INSERT OR IGNORE`` on its
event id. A writer that cannot get the database (a dashboard or dbt holding it) leaves
its spool file for the next merge: rows are delayed, never lost.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from sthelar_platform.core.atomic import file_lock, write_text_atomic

# table -> ordered (column, DuckDB type). event_id is the idempotency key of every row.
SCHEMA: dict[str, list[tuple[str, str]]] = {
    "materializations": [
        ("event_id", "VARCHAR PRIMARY KEY"), ("run_id", "VARCHAR"), ("asset_key", "VARCHAR"),
        ("partition_key", "VARCHAR"), ("code_version", "VARCHAR"), ("data_version", "VARCHAR"),
        ("input_versions", "VARCHAR"), ("output_uri", "VARCHAR"), ("started_at", "TIMESTAMP"),
        ("finished_at", "TIMESTAMP"), ("status", "VARCHAR"), ("error", "VARCHAR"), ("metadata", "VARCHAR"),
    ],
    "registration_qc": [
        ("event_id", "VARCHAR PRIMARY KEY"), ("run_id", "VARCHAR"), ("slide_id", "VARCHAR"), ("source", "VARCHAR"),
        ("median_residual_um", "DOUBLE"), ("p90_residual_um", "DOUBLE"), ("matched_fraction", "DOUBLE"),
        ("transform", "VARCHAR"), ("passed", "BOOLEAN"), ("recorded_at", "TIMESTAMP"),
        ("transform_he_px_to_morphology_px", "VARCHAR"), ("n_he_nuclei", "BIGINT"), ("n_xenium_nuclei", "BIGINT"),
        ("residual_grid_um", "VARCHAR"), ("he_pixel_size_um", "DOUBLE"), ("implied_he_pixel_size_um", "DOUBLE"),
        ("magnification", "VARCHAR"), ("csv_median_residual_um", "DOUBLE"), ("csv_matched_fraction", "DOUBLE"),
        ("failures", "VARCHAR"), ("notes", "VARCHAR"),
    ],
    "annotation_qc": [
        ("event_id", "VARCHAR PRIMARY KEY"), ("run_id", "VARCHAR"), ("slide_id", "VARCHAR"), ("n_cells", "BIGINT"),
        ("frac_unknown", "DOUBLE"), ("frac_less10", "DOUBLE"), ("crosscheck_agreement", "DOUBLE"),
        ("n_flagged_clusters", "BIGINT"), ("passed", "BOOLEAN"), ("recorded_at", "TIMESTAMP"),
        ("tissue", "VARCHAR"), ("reference_sha256", "VARCHAR"), ("composition", "VARCHAR"),
        ("crosscheck_by_category", "VARCHAR"), ("frac_flagged_clusters", "DOUBLE"),
    ],
    "annotation_clusters": [
        ("event_id", "VARCHAR PRIMARY KEY"), ("run_id", "VARCHAR"), ("slide_id", "VARCHAR"), ("cluster", "VARCHAR"),
        ("n_cells", "BIGINT"), ("tangram_majority", "VARCHAR"), ("marker_label", "VARCHAR"), ("decision", "VARCHAR"),
        ("label", "VARCHAR"), ("disagreeing_fraction", "DOUBLE"), ("flagged", "BOOLEAN"), ("flag_reasons", "VARCHAR"),
        ("top_markers", "VARCHAR"), ("recorded_at", "TIMESTAMP"),
    ],
    "patch_qc": [
        ("event_id", "VARCHAR PRIMARY KEY"), ("run_id", "VARCHAR"), ("slide_id", "VARCHAR"), ("magnification", "VARCHAR"),
        ("patch_id", "VARCHAR"), ("x0", "BIGINT"), ("y0", "BIGINT"), ("n_nuclei", "BIGINT"), ("dice", "DOUBLE"),
        ("jaccard", "DOUBLE"), ("bpq", "DOUBLE"), ("det_f1", "DOUBLE"), ("flagged", "BOOLEAN"), ("recorded_at", "TIMESTAMP"),
    ],
    "model_eval": [
        ("event_id", "VARCHAR PRIMARY KEY"), ("run_id", "VARCHAR"), ("model_id", "VARCHAR"), ("grouping", "VARCHAR"),
        ("split", "VARCHAR"), ("tissue", "VARCHAR"), ("class_name", "VARCHAR"), ("metric", "VARCHAR"),
        ("value", "DOUBLE"), ("recorded_at", "TIMESTAMP"),
    ],
    "model_training": [
        ("event_id", "VARCHAR PRIMARY KEY"), ("run_id", "VARCHAR"), ("model_key", "VARCHAR"), ("grouping", "VARCHAR"),
        ("epoch", "BIGINT"), ("train_loss", "DOUBLE"), ("val_loss", "DOUBLE"), ("seconds", "DOUBLE"),
        ("patches_per_s", "DOUBLE"), ("device", "VARCHAR"), ("size", "VARCHAR"), ("dataset_version", "VARCHAR"),
        ("recorded_at", "TIMESTAMP"),
    ],
    "prediction_agreement": [
        ("event_id", "VARCHAR PRIMARY KEY"), ("run_id", "VARCHAR"), ("slide_id", "VARCHAR"), ("model_id", "VARCHAR"),
        ("grouping", "VARCHAR"), ("class_name", "VARCHAR"), ("n_xenium", "BIGINT"), ("n_predicted", "BIGINT"),
        ("tp", "BIGINT"), ("precision", "DOUBLE"), ("recall", "DOUBLE"), ("f1", "DOUBLE"), ("recorded_at", "TIMESTAMP"),
    ],
    "slide_ingest": [
        ("event_id", "VARCHAR PRIMARY KEY"), ("run_id", "VARCHAR"), ("slide_id", "VARCHAR"), ("tissue", "VARCHAR"),
        ("n_cells", "BIGINT"), ("n_transcripts", "BIGINT"), ("n_genes", "BIGINT"), ("n_controls", "BIGINT"),
        ("n_unassigned", "BIGINT"), ("morphology_width", "BIGINT"), ("morphology_height", "BIGINT"),
        ("pixel_size_um", "DOUBLE"), ("synthetic", "BOOLEAN"), ("recorded_at", "TIMESTAMP"),
    ],
}


def _insert_rows(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict[str, Any]]) -> None:
    """Bulk insert through a registered DataFrame (thousands of rows in one statement)."""
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
        con.unregister("_incoming_rows")


def _checked_payload(payload: Any) -> dict[str, Any]:
    """A spool payload whose table and columns this deployment knows (raises otherwise)."""
    if not isinstance(payload, dict) or "table" not in payload or not ("row" in payload or "rows" in payload):
        raise ValueError("not a lineage spool record ({table, row | rows})")
    table = payload["table"]
    if table not in SCHEMA:
        raise KeyError(f"unknown lineage table {table!r} (written by another version of the platform?)")
    rows = payload["rows"] if "rows" in payload else [payload["row"]]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError("rows are not objects")
    known = {c for c, _ in SCHEMA[table]}
    unknown = sorted({c for r in rows for c in r} - known)
    if unknown:
        raise KeyError(f"columns {unknown} are not in lineage table {table!r}")
    return payload


def _insert_payload(con: duckdb.DuckDBPyConnection, payload: dict[str, Any]) -> None:
    table = payload["table"]
    if "rows" in payload:
        _insert_rows(con, table, payload["rows"])
        return
    row = payload["row"]
    cols = [c for c, _ in SCHEMA[table] if c in row]
    sql = f"INSERT OR IGNORE INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
    con.execute(sql, [row[c] for c in cols])


def utcnow() -> str:
    """Naive UTC timestamp with microseconds (the lineage tables' time format)."""
    return datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


class LineageStore:
    """Append-only lineage/QC tables in ``db_path`` with a spool folder beside it."""

    def __init__(self, db_path: str | Path, lock_timeout_s: float = 60.0):
        self.db_path = Path(db_path)
        self.spool = self.db_path.parent / f"{self.db_path.stem}_spool"
        self.lock_path = self.db_path.parent / f"{self.db_path.name}.lock"
        self.lock_timeout_s = lock_timeout_s
        self.spool.mkdir(parents=True, exist_ok=True)

    # -- writing -------------------------------------------------------------------
    def record(self, table: str, row: dict[str, Any], flush: bool = True) -> str:
        """Persist one row durably (spool), then try to merge it; returns its event id."""
        columns = dict(SCHEMA[table]) if table in SCHEMA else None
        if columns is None:
            raise KeyError(f"unknown lineage table {table!r}; known: {sorted(SCHEMA)}")
        unknown = set(row) - set(columns)
        if unknown:
            raise KeyError(f"columns {sorted(unknown)} are not in lineage table {table!r}")
        row = dict(row)
        row.setdefault("event_id", uuid.uuid4().hex)
        if "recorded_at" in columns:
            row.setdefault("recorded_at", utcnow())
        name = f"{time.time_ns():020d}-{row['event_id']}.json"
        write_text_atomic(self.spool / name, json.dumps({"table": table, "row": row}, default=str))
        if flush:
            self.flush()
        return row["event_id"]

    def record_many(self, table: str, rows: list[dict[str, Any]], flush: bool = True) -> int:
        """Persist many rows of one table as a single spool file (one patch_qc row per patch)."""
        columns = dict(SCHEMA.get(table, []))
        if not columns:
            raise KeyError(f"unknown lineage table {table!r}; known: {sorted(SCHEMA)}")
        unknown = set().union(*(set(r) for r in rows)) - set(columns) if rows else set()
        if unknown:
            raise KeyError(f"columns {sorted(unknown)} are not in lineage table {table!r}")
        now = utcnow()
        rows = [{"event_id": uuid.uuid4().hex, **({"recorded_at": now} if "recorded_at" in columns else {}), **r}
                for r in rows]
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex}.json"
        write_text_atomic(self.spool / name, json.dumps({"table": table, "rows": rows}, default=str))
        if flush:
            self.flush()
        return len(rows)

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

    def ensure_schema(self, con: duckdb.DuckDBPyConnection) -> None:
        """Create missing tables and add columns that a newer platform version introduced.

        One count query decides whether anything is missing: flush runs on every record.
        """
        have = con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name IN "
                           f"({', '.join('?' for _ in SCHEMA)})", list(SCHEMA)).fetchone()[0]
        if have == sum(len(cols) for cols in SCHEMA.values()):
            return
        for table, cols in SCHEMA.items():
            con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(f'{c} {t}' for c, t in cols)})")
            have = {r[0] for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]).fetchall()}
            for c, t in cols:
                if c not in have:
                    con.execute(f"ALTER TABLE {table} ADD COLUMN {c} {t.replace(' PRIMARY KEY', '')}")

    def flush(self) -> int:
        """Merge spooled rows into DuckDB; returns how many files were merged (0 if busy).

        A spool file that cannot be merged (not JSON, an unknown table or column, a value DuckDB
        refuses: e.g. written by a newer deployment) moves to ``<spool>/quarantine/`` with a reason
        file; every other file still merges. Nothing is dropped silently, and one bad file never
        stops the platform.
        """
        with self._locked() as got:
            if not got:
                return 0
            try:
                con = self._connect()
            except duckdb.IOException:
                return 0  # another process (dbt, a dashboard) holds the database; retry later
            try:
                self.ensure_schema(con)
                files = sorted(self.spool.glob("*.json"))
                payloads = {}
                for f in files:
                    try:
                        payloads[f] = _checked_payload(json.loads(f.read_text()))
                    except FileNotFoundError:
                        continue  # merged by another process meanwhile
                    except (ValueError, KeyError, TypeError) as exc:
                        self._quarantine(f, f"{type(exc).__name__}: {exc}")
                while payloads:
                    con.execute("BEGIN TRANSACTION")
                    current = None
                    try:
                        for current, payload in payloads.items():
                            _insert_payload(con, payload)
                        con.execute("COMMIT")
                        break
                    except duckdb.Error as exc:  # one file's values were refused: set it aside, merge the rest
                        con.execute("ROLLBACK")
                        self._quarantine(current, f"{type(exc).__name__}: {exc}")
                        payloads.pop(current)
            finally:
                con.close()
            for f in payloads:
                f.unlink(missing_ok=True)
            return len(payloads)

    @property
    def quarantine(self) -> Path:
        """Where spool files that could not be merged are kept, each with a ``.reason.txt``."""
        return self.spool / "quarantine"

    def quarantined(self) -> list[dict[str, str]]:
        """The quarantined spool files and why (for the dashboard and the warn check)."""
        if not self.quarantine.is_dir():
            return []
        return [{"file": f.name, "reason": f.with_suffix(".reason.txt").read_text().strip()
                 if f.with_suffix(".reason.txt").exists() else "unknown"}
                for f in sorted(self.quarantine.glob("*.json"))]

    def _quarantine(self, f: Path, reason: str) -> None:
        import logging

        self.quarantine.mkdir(exist_ok=True)
        write_text_atomic(self.quarantine / f.with_suffix(".reason.txt").name, reason + "\n")
        f.replace(self.quarantine / f.name)
        logging.getLogger("sthelar.lineage").warning(
            "lineage spool file %s could not be merged (%s); moved to %s", f.name, reason, self.quarantine)

    # -- reading -------------------------------------------------------------------
    def query(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        """Run a parameterized read query after merging pending rows."""
        self.flush()
        if not self.db_path.exists():
            con = self._connect()
            self.ensure_schema(con)
            con.close()
        with self._locked():
            con = self._connect(read_only=True)
            try:
                cur = con.execute(sql, params or [])
                names = [d[0] for d in cur.description]
                return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
            finally:
                con.close()

    def latest_data_version(self, asset_key: str, partition_key: str | None) -> str | None:
        rows = self.query(
            "SELECT data_version FROM materializations WHERE asset_key = ? AND partition_key IS NOT DISTINCT FROM ? "
            "AND status = 'success' ORDER BY finished_at DESC LIMIT 1",
            [asset_key, partition_key],
        )
        return rows[0]["data_version"] if rows else None

    def snapshot(self, dest: str | Path) -> Path:
        """A consistent read-only copy of the database for dbt and dashboards.

        Taken under the writers' lock after a merge, so readers never hold the live file (a
        writer would otherwise have to wait for a long dbt build) and never see half a merge.
        The copy is renamed into place: a reader of ``dest`` sees the old or the new snapshot.
        """
        import shutil

        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.flush()
        tmp = dest.with_name(f"{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
        with self._locked() as got:
            if not got:
                raise TimeoutError(f"lineage database {self.db_path} stayed locked for {self.lock_timeout_s}s")
            con = self._connect()
            try:
                self.ensure_schema(con)
                con.execute("CHECKPOINT")
            finally:
                con.close()
            shutil.copyfile(self.db_path, tmp)
        tmp.replace(dest)
        return dest

    def pending(self) -> int:
        return len(list(self.spool.glob("*.json")))
