"""The lineage / QC database (lineage.duckdb) as a resource."""

from __future__ import annotations

from dagster import ConfigurableResource

from sthelar_platform.core.lineage import LineageStore


class LineageResource(ConfigurableResource):
    """The DuckDB lineage / QC database; safe for concurrent writer processes."""

    db_path: str

    def store(self) -> LineageStore:
        return LineageStore(self.db_path)
