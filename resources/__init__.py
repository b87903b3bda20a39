"""Dagster resources: where data lives, the lineage database, the slide catalog and the torch device."""

from resources.catalog import SlideCatalogResource
from resources.compute import ComputeDeviceResource
from resources.lineage import LineageResource
from resources.storage import StorageResource

__all__ = ["ComputeDeviceResource", "LineageResource", "SlideCatalogResource", "StorageResource"]
