"""Dagster resources: where data lives, the lineage database and the slide catalog."""

from resources.catalog import SlideCatalogResource
from resources.lineage import LineageResource
from resources.storage import StorageResource

__all__ = ["LineageResource", "SlideCatalogResource", "StorageResource"]
