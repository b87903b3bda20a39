"""The storage root (STHELAR_HOME) as a resource: where each stage writes its outputs."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource

from sthelar_platform.core.paths import StorageLayout


class StorageResource(ConfigurableResource):
    """The storage root (``STHELAR_HOME``). A local path today; an object-store URI later."""

    root: str

    @property
    def layout(self) -> StorageLayout:
        return StorageLayout.at(self.root)

    def stage_dir(self, stage: str, slide_id: str) -> Path:
        return self.layout.stage_dir(stage, slide_id)
