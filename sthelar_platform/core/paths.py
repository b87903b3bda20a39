"""Where data lives under the storage root (``STHELAR_HOME``).

Every stage writes ``warehouse/<stage>/<slide_id>/``; slide ids are validated before
they become path components.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sthelar_platform.core.ids import validate_slide_id
from sthelar_platform.core.warehouse import StageFolder

F = TypeVar("F", bound=StageFolder)


@dataclass(frozen=True)
class StorageLayout:
    root: Path

    @classmethod
    def at(cls, root: str | Path) -> StorageLayout:
        return cls(Path(root).resolve())

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    @property
    def references(self) -> Path:
        return self.root / "references"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def dataset(self) -> Path:
        """The cross-slide training dataset (``exports/dataset``)."""
        return self.exports / "dataset"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def qc(self) -> Path:
        """The dbt-built QC database and dbt's latest results."""
        return self.root / "qc"

    @property
    def dashboards(self) -> Path:
        return self.root / "dashboards"

    @property
    def lineage_db(self) -> Path:
        return self.root / "lineage.duckdb"

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.yaml"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster"

    @property
    def bench(self) -> Path:
        return self.root / "bench"

    def stage_dir(self, stage: str, slide_id: str) -> Path:
        if not stage.isidentifier():
            raise ValueError(f"invalid stage name {stage!r}")
        return self.warehouse / stage / validate_slide_id(slide_id)

    def folder(self, kind: type[F], slide_id: str, stage: str | None = None) -> F:
        """A slide's output folder of one stage, its files named (``stage`` for per-magnification stages)."""
        return kind(self.stage_dir(stage or kind.stage, slide_id))
