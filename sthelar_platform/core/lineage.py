"""Lineage and QC records, safe with many writer processes and, with Postgres, many hosts.

Each record is first written as a JSON spool file (atomic rename, so it is durable the moment
``record`` returns), then merged into the database idempotently on its event id. The database is
embedded DuckDB by default (one writer process at a time, under an OS file lock; a writer that
cannot get it leaves its spool file for the next merge: rows are delayed, never lost), or
PostgreSQL when a ``postgresql://`` URL is given (``STHELAR_LINEAGE_URL`` at the edge), which many
hosts can write at once. Both hold the same tables; dbt and the dashboard read a DuckDB snapshot
of either.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sthelar_platform.core._lineage_schema import SCHEMA
from sthelar_platform.core.atomic import write_text_atomic


class LineageBackend(Protocol):
    """Where the tables live (DuckDB file or Postgres); the spool in front of it is the store's own."""

    def merge(self, payloads: dict[Path, dict[str, Any]], quarantine: Callable[[Path, str], None]) -> list[Path]: ...

    def query(self, sql: str, params: list[Any]) -> list[dict[str, Any]]: ...

    def snapshot(self, dest: Path) -> None: ...

__all__ = ["SCHEMA", "LineageStore", "utcnow"]

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


def utcnow() -> str:
    """Naive UTC timestamp with microseconds (the lineage tables' time format)."""
    return datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


class LineageStore:
    """Append-only lineage/QC tables with a spool folder beside ``db_path``.

    The tables live in the DuckDB file ``db_path``, or in Postgres when ``url`` is a
    ``postgresql://`` URL (then ``db_path`` only places the spool).
    """

    def __init__(self, db_path: str | Path, lock_timeout_s: float = 60.0, url: str | None = None):
        self.db_path = Path(db_path)
        self.spool = self.db_path.parent / f"{self.db_path.stem}_spool"
        self.lock_timeout_s = lock_timeout_s
        self.url = url or None
        self.spool.mkdir(parents=True, exist_ok=True)
        self.backend: LineageBackend
        if self.url is None:
            from sthelar_platform.core._lineage_duckdb import DuckDBBackend

            self.backend = DuckDBBackend(self.db_path, lock_timeout_s)
        elif self.url.startswith(("postgresql://", "postgres://")):
            from sthelar_platform.core._lineage_postgres import PostgresBackend

            self.backend = PostgresBackend(self.url)
        else:
            raise ValueError(f"lineage URL {_redact(self.url)!r}: use postgresql://user@host:port/db, "
                             "or no URL for the embedded DuckDB file")

    @property
    def where(self) -> str:
        """The database, for messages (no password)."""
        return _redact(self.url) if self.url else str(self.db_path)

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

    def flush(self) -> int:
        """Merge spooled rows into the database; returns how many files were merged (0 if busy).

        A spool file that cannot be merged (not JSON, an unknown table or column, a value the database
        refuses: e.g. written by a newer deployment) moves to ``<spool>/quarantine/`` with a reason
        file; every other file still merges. Nothing is dropped silently, and one bad file never
        stops the platform.
        """
        payloads = {}
        for f in sorted(self.spool.glob("*.json")):
            try:
                payloads[f] = _checked_payload(json.loads(f.read_text()))
            except FileNotFoundError:
                continue  # merged by another process meanwhile
            except (ValueError, KeyError, TypeError) as exc:
                self._quarantine(f, f"{type(exc).__name__}: {exc}")
        if not payloads:
            return 0
        merged = self.backend.merge(payloads, self._quarantine)
        for f in merged:
            f.unlink(missing_ok=True)
        return len(merged)

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
        """Run a parameterized read query (``?`` placeholders, on either backend) after merging pending rows."""
        self.flush()
        return self.backend.query(sql, params or [])

    def latest_data_version(self, asset_key: str, partition_key: str | None) -> str | None:
        rows = self.query(
            "SELECT data_version FROM materializations WHERE asset_key = ? AND partition_key IS NOT DISTINCT FROM ? "
            "AND status = 'success' ORDER BY finished_at DESC LIMIT 1",
            [asset_key, partition_key],
        )
        return rows[0]["data_version"] if rows else None

    def snapshot(self, dest: str | Path) -> Path:
        """A consistent read-only DuckDB copy of the tables for dbt and dashboards, whatever the backend.

        Readers never hold the live database (a writer would otherwise wait for a long dbt build) and
        never see half a merge. The copy is renamed into place: a reader of ``dest`` sees the old or
        the new snapshot.
        """
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.flush()
        tmp = dest.with_name(f"{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            self.backend.snapshot(tmp)
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def pending(self) -> int:
        return len(list(self.spool.glob("*.json")))


def _redact(url: str) -> str:
    """``url`` without its password."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
