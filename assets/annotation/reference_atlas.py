"""Reference atlases as an observable source, and the condition that rebuilds what depends on them.

``reference_atlas`` is partitioned like the slides: a slide's data version is the sha256 of the
atlas it is annotated with (its own ``reference``, else its tissue's). Changing breast.h5ad
changes the versions of the breast slides' partitions only; the annotation assets and everything
after them carry ``REBUILD_ON_CHANGE``, so the automation sensor rebuilds exactly those
partitions. Observing an unchanged file records the same version and rebuilds nothing.
"""

from pathlib import Path

from dagster import AutomationCondition, DataVersion, DataVersionsByPartition, observable_source_asset

from assets.partitions import slides_partitions
from resources import SlideCatalogResource, StorageResource
from sthelar_platform.core.config import load_config
from sthelar_platform.core.hashing import sha256_file

# Rebuild a partition when an upstream partition got a *new data version* (not merely a new
# observation or a rerun that produced the same bytes), including parents requested in the same tick.
REBUILD_ON_CHANGE = AutomationCondition.eager().replace("newly_updated", AutomationCondition.data_version_changed())


@observable_source_asset(
    partitions_def=slides_partitions,
    group_name="annotation",
    description="The single-cell reference atlas each slide is annotated with (the slide's own `reference`, else "
                "its tissue's in sthelar_platform/config/annotation.yaml). Data version = the file's sha256, per slide partition.",
)
def reference_atlas(storage: StorageResource, catalog: SlideCatalogResource) -> DataVersionsByPartition:
    from sthelar_platform.annotation.references import reference_spec

    hashes: dict[Path, str] = {}
    versions = {}
    for spec in catalog.list():
        ref = reference_spec(spec.tissue, Path(storage.root) / "references", load_config("annotation").references,
                             spec.reference)
        if ref.path not in hashes:
            hashes[ref.path] = sha256_file(ref.path) if ref.path.exists() else "missing"
        versions[spec.slide_id] = DataVersion(hashes[ref.path])
    return DataVersionsByPartition(versions)
