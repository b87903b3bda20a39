"""The many-host lineage backend: the same tables in PostgreSQL (schema ``sthelar_lineage``).

Postgres takes concurrent writers itself, so there is no file lock: every host merges its spool with
``INSERT ... ON CONFLICT (event_id) DO NOTHING``, and two hosts merging the same file insert it once.
The tables sit in their own schema, so they share the Dagster instance's database without touching
Dagster's tables.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sthelar_platform.core._lineage_schema import SCHEMA

PG_SCHEMA = "sthelar_lineage"
_TYPES = {"DOUBLE": "DOUBLE PRECISION"}
_SCHEMA_LOCK = 7_421_001  # advisory lock id: concurrent first merges create the tables once
_FETCH_ROWS = 50_000


def _pg_type(duckdb_type: str) -> str:
    base, _, rest = duckdb_type.partition(" ")
    return " ".join(x for x in (_TYPES.get(base, base), rest) if x)


def _placeholders(sql: str) -> str:
    """The platform's ``?`` placeholders as psycopg2's ``%s`` (literal ``%`` escaped)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


class PostgresBackend:
    """Lineage tables in Postgres, reached by URL (``postgresql://user:password@host:port/db``)."""

    def __init__(self, url: str):
        self.url = url
        self._ready = False

    def _connect(self) -> contextlib.closing:
        """A connection (closed on leaving ``with``) whose unqualified table names are the lineage tables."""
        import psycopg2

        return contextlib.closing(psycopg2.connect(self.url, connect_timeout=10, options=f"-c search_path={PG_SCHEMA}"))

    def _create_tables(self, con: Any) -> None:
        if self._ready:
            return
        with con.cursor() as cur:
            cur.execute("SELECT count(*) FROM information_schema.columns WHERE table_schema = %s AND table_name = ANY(%s)",
                        [PG_SCHEMA, list(SCHEMA)])
            if cur.fetchone()[0] == sum(len(cols) for cols in SCHEMA.values()):
                con.commit()  # end the check's transaction: callers may change session settings next
                self._ready = True
                return
            cur.execute("SELECT pg_advisory_xact_lock(%s)", [_SCHEMA_LOCK])
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}")
            for table, cols in SCHEMA.items():
                cur.execute(f"CREATE TABLE IF NOT EXISTS {PG_SCHEMA}.{table} "
                            f"({', '.join(f'{c} {_pg_type(t)}' for c, t in cols)})")
                for c, t in cols:
                    if "PRIMARY KEY" not in t:
                        cur.execute(f"ALTER TABLE {PG_SCHEMA}.{table} ADD COLUMN IF NOT EXISTS {c} {_pg_type(t)}")
        con.commit()
        self._ready = True

    def merge(self, payloads: dict[Path, dict[str, Any]], quarantine: Callable[[Path, str], None]) -> list[Path]:
        """Insert every payload in one transaction; a payload Postgres refuses is quarantined (a savepoint each)."""
        import psycopg2
        from psycopg2.extras import execute_values

        merged = []
        try:
            connection = self._connect()
        except psycopg2.OperationalError as exc:  # server unreachable: the spool keeps the rows for later
            logging.getLogger("sthelar.lineage").warning("lineage database unreachable (%s); %d spool file(s) wait",
                                                         str(exc).strip().splitlines()[0], len(payloads))
            return []
        with connection as con:
            self._create_tables(con)
            with con.cursor() as cur:
                for f, payload in payloads.items():
                    table = payload["table"]
                    rows = payload["rows"] if "rows" in payload else [payload["row"]]
                    cols = [c for c, _ in SCHEMA[table] if any(c in r for r in rows)]
                    cur.execute("SAVEPOINT payload")
                    try:
                        execute_values(cur, f"INSERT INTO {table} ({', '.join(cols)}) VALUES %s "
                                            "ON CONFLICT (event_id) DO NOTHING",
                                       [tuple(_clean(r.get(c)) for c in cols) for r in rows], page_size=1000)
                    except psycopg2.DataError as exc:  # this file's values were refused: set it aside
                        cur.execute("ROLLBACK TO SAVEPOINT payload")
                        quarantine(f, f"{type(exc).__name__}: {str(exc).strip()}")
                        continue
                    cur.execute("RELEASE SAVEPOINT payload")
                    merged.append(f)
            con.commit()
        return merged

    def query(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        with self._connect() as con:
            self._create_tables(con)
            with con.cursor() as cur:
                cur.execute(_placeholders(sql), params)
                names = [d[0] for d in cur.description]
                rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
            con.rollback()
        return rows

    def snapshot(self, dest: Path) -> None:
        """Export every table into a new DuckDB file (one repeatable-read transaction: a consistent cut)."""
        import duckdb
        import pandas as pd

        from sthelar_platform.core._lineage_duckdb import create_tables

        out = duckdb.connect(str(dest))
        try:
            create_tables(out)
            with self._connect() as con:
                self._create_tables(con)
                con.set_session(isolation_level="REPEATABLE READ", readonly=True)
                for table, cols in SCHEMA.items():
                    names = [c for c, _ in cols]
                    with con.cursor(name=f"export_{table}") as cur:  # server-side: streamed in batches
                        cur.execute(f"SELECT {', '.join(names)} FROM {table}")
                        while batch := cur.fetchmany(_FETCH_ROWS):
                            frame = pd.DataFrame(batch, columns=names, dtype=object)
                            out.register("_batch", frame)
                            out.execute(f"INSERT INTO {table} SELECT * FROM _batch")
                            out.unregister("_batch")
                con.rollback()
            out.execute("CHECKPOINT")
        finally:
            out.close()
