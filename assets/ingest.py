"""Ingest assets: the Xenium bundle and the H&E image of each slide, persisted under the storage root.

Library stages are imported in the asset bodies (as in every asset module): loading the definitions stays
free of spatialdata-io, torch and scanpy, which only the steps that use them pay for.
"""


from pathlib import Path
from typing import TYPE_CHECKING

from dagster import AssetExecutionContext, MaterializeResult, asset

from assets._runtime import StageOutput, code_version_of, compute_class, md_image, run_slide_stage
from assets.partitions import slides_partitions
from resources import LineageResource, SlideCatalogResource, StorageResource
from sthelar_platform.core.config import load_config
from sthelar_platform.core.warehouse import HEImageFolder, XeniumSlideFolder

if TYPE_CHECKING:
    from sthelar_platform.ingest.he_image import HEImageSummary
    from sthelar_platform.ingest.xenium import XeniumIngestSummary


@asset(
    **compute_class("xenium_slide"),
    partitions_def=slides_partitions,
    code_version=code_version_of("sthelar_platform.ingest.xenium", configs=("pipeline.ingest",)),
    group_name="ingest",
    kinds={"python", "parquet"},
    description="Xenium bundle (XOA 1.x to 3.x, Xenium Ranger) read with spatialdata-io, or from its own files "
                "where the reader would misread its version: cells table, boundaries, transcripts, DAPI pyramid.",
)
def xenium_slide(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource,
                 catalog: SlideCatalogResource) -> MaterializeResult:
    from sthelar_platform.ingest import xenium as ingest_lib

    spec = catalog.get(context.partition_key)
    pipeline = load_config("pipeline")

    def compute(out: Path) -> "StageOutput[XeniumIngestSummary]":
        s = ingest_lib.ingest_xenium(spec.xenium_dir, out, pipeline.ingest)
        context.log.info(f"{spec.slide_id}: {s.n_cells} cells, {s.n_transcripts} transcripts, {s.n_genes} genes")
        return StageOutput({
            "dagster/row_count": s.n_cells, "n_cells": s.n_cells, "n_transcripts": s.n_transcripts,
            "n_genes": s.n_genes, "n_nuclei": s.n_nuclei, "n_controls": s.n_controls, "n_unassigned": s.n_unassigned,
            "pixel_size_um": s.pixel_size_um, "analysis_sw_version": s.analysis_sw_version,
            "generation": s.generation, "reader": s.reader, "n_proteins": s.n_proteins,
            "n_cells_without_nucleus": s.n_cells_without_nucleus, "n_multinucleate_cells": s.n_multinucleate_cells,
            "morphology_levels": s.morphology_levels, "tissue": spec.tissue, "synthetic": spec.synthetic,
            "source": str(spec.xenium_dir),
            "dapi_thumbnail": md_image(XeniumSlideFolder(out).thumbnail, "DAPI"),
        }, s)

    run = run_slide_stage(context, "xenium_slide", storage, lineage, compute)
    s = run.value
    lineage.store().record("slide_ingest", {
        "run_id": context.run_id, "slide_id": spec.slide_id, "tissue": spec.tissue, "n_cells": s.n_cells,
        "n_transcripts": s.n_transcripts, "n_genes": s.n_genes, "n_controls": s.n_controls,
        "n_unassigned": s.n_unassigned, "morphology_height": s.morphology_levels[0][0],
        "morphology_width": s.morphology_levels[0][1], "pixel_size_um": s.pixel_size_um,
        "synthetic": spec.synthetic})
    return run.result()


@asset(
    **compute_class("he_image"),
    partitions_def=slides_partitions,
    code_version=code_version_of("sthelar_platform.ingest.he_image", configs=("pipeline",)),
    group_name="ingest",
    kinds={"python", "tiff"},
    description="The slide's H&E scan (SVS, NDPI, OME-TIFF in any axis order, tiled or single-level TIFF) stored once "
                "as the platform's tiled 2x OME-TIFF pyramid (hard-linked when it already is one), with pixel size "
                "and magnification.",
)
def he_image(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource,
             catalog: SlideCatalogResource) -> MaterializeResult:
    from sthelar_platform.ingest import he_image as he_lib

    spec = catalog.get(context.partition_key)
    pipeline = load_config("pipeline")

    def compute(out: Path) -> "StageOutput[HEImageSummary]":
        s = he_lib.ingest_he(spec.he_image, out, pipeline.he_image.magnification_um_per_px,
                             thumbnail_px=pipeline.ingest.thumbnail_max_px,
                             assumed_um_per_px=pipeline.registration.assumed_he_um_per_px,
                             progress=lambda msg: context.log.info(f"{spec.slide_id}: H&E pyramid {msg}"))
        context.log.info(f"{spec.slide_id}: H&E {s.width}x{s.height} px, {s.pixel_size_um} µm/px ({s.magnification}, "
                         f"from {s.pixel_size_source}); stored as {s.stored_as}")
        return StageOutput({
            "width": s.width, "height": s.height, "n_levels": s.n_levels, "level_shapes": s.level_shapes,
            "pixel_size_um": s.pixel_size_um if s.pixel_size_um is not None else "unknown",
            "pixel_size_source": s.pixel_size_source, "source_axes": s.source_axes,
            "source_levels": s.source_levels, "stored_as": s.stored_as,
            "magnification": s.magnification, "source": str(spec.he_image),
            "alignment_csv": str(spec.alignment_csv) if spec.alignment_csv else "none",
            "he_thumbnail": md_image(HEImageFolder(out).thumbnail, "H&E"),
        }, s)

    return run_slide_stage(context, "he_image", storage, lineage, compute).result()


ASSETS = [xenium_slide, he_image]
