"""The storage root (STHELAR_HOME) as a resource: where each stage writes its outputs."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from dagster import ConfigurableResource

from sthelar_platform.core.paths import StorageLayout
from sthelar_platform.core.warehouse import StageFolder

F = TypeVar("F", bound=StageFolder)


class StorageResource(ConfigurableResource):
    """The storage root (``STHELAR_HOME``). A local path today; an object-store URI later."""

    root: str

    @property
    def layout(self) -> StorageLayout:
        return StorageLayout.at(self.root)

    def stage_dir(self, stage: str, slide_id: str) -> Path:
        return self.layout.stage_dir(stage, slide_id)

    def folder(self, kind: type[F], slide_id: str, stage: str | None = None) -> F:
        """A slide's output folder of one stage, its files named (see sthelar_platform.core.warehouse)."""
        return self.layout.folder(kind, slide_id, stage)
