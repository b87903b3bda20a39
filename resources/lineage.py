"""The lineage / QC database as a resource: lineage.duckdb, or Postgres when STHELAR_LINEAGE_URL is set."""

from __future__ import annotations

from dagster import ConfigurableResource

from sthelar_platform.core.lineage import LineageStore


class LineageResource(ConfigurableResource):
    """The lineage / QC tables; safe for concurrent writer processes (and hosts, with Postgres).

    ``url`` empty: the embedded DuckDB file ``db_path``. ``postgresql://...``: Postgres (the spool stays
    beside ``db_path``).
    """

    db_path: str
    url: str = ""

    def store(self) -> LineageStore:
        return LineageStore(self.db_path, url=self.url or None)
