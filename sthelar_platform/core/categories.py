"""Harmonized categories and their 9-class / 5-class groupings (built from ``categories.yaml`` by core.config)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class Grouping:
    name: str
    classes: tuple[str, ...]
    category_to_class: dict[str, str]

    def class_index(self, category: str) -> int:
        """Type-map value of a category: class index + 1 (0 is background)."""
        return self.classes.index(self.category_to_class[category]) + 1


@dataclass(frozen=True)
class CategorySystem:
    categories: tuple[str, ...]
    special_labels: tuple[str, ...]
    less10_max_transcripts: int
    label_map: dict[str, str]
    _groupings: dict[str, dict]

    @cached_property
    def groupings(self) -> dict[str, Grouping]:
        out = {}
        for name, spec in self._groupings.items():
            mapping = {}
            for cls in spec["classes"]:
                for member in spec.get("members", {}).get(cls, [cls]):
                    mapping[member] = cls
            missing = set(self.all_labels) - set(mapping)
            if missing:
                raise ValueError(f"grouping {name!r} in categories.yaml does not place {sorted(missing)}")
            out[name] = Grouping(name, tuple(spec["classes"]), mapping)
        return out

    @property
    def all_labels(self) -> tuple[str, ...]:
        return self.categories + self.special_labels
