"""Schema of ``categories.yaml``: the harmonized categories, their groupings and the atlas label map."""

from __future__ import annotations

from pydantic import Field

from sthelar_platform.core.categories import CategorySystem
from sthelar_platform.core.config._base import Section


class GroupingSpec(Section):
    classes: list[str]
    members: dict[str, list[str]] = {}


class CategoriesConfig(Section):
    version: int
    categories: list[str]
    special_labels: list[str]
    less10_max_transcripts: int = Field(ge=0)
    groupings: dict[str, GroupingSpec]
    label_map: dict[str, str]

    def system(self) -> CategorySystem:
        return CategorySystem(
            categories=tuple(self.categories), special_labels=tuple(self.special_labels),
            less10_max_transcripts=self.less10_max_transcripts, label_map=dict(self.label_map),
            _groupings={k: g.model_dump() for k, g in self.groupings.items()})
