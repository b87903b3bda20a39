"""The slide's exports: CellViT- and PanNuke-style datasets and the complete SpatialData zarr."""

from pathlib import Path

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from assets._runtime import StageOutput, code_version_of, compute_class, run_slide_stage
from assets.annotation.labels import cell_counts, cell_types
from assets.annotation.reference_atlas import REBUILD_ON_CHANGE
from assets.partitions import slides_partitions
from assets.registration import registered_he, registration_of
from assets.tiling.agreement import segmentation_agreement
from resources import LineageResource, StorageResource
from sthelar_platform.core.config import load_categories, load_config
from sthelar_platform.core.ids import validate_slide_id
from sthelar_platform.core.warehouse import SlideExportFolder

STAGES = ("xenium_slide", "registered_he", "cell_counts", "cell_types", "patches_40x", "patches_20x",
          "segmentation_agreement")


@asset(
    **compute_class("slide_export"),
    partitions_def=slides_partitions,
    deps=[segmentation_agreement, registered_he, cell_types, cell_counts],
    automation_condition=REBUILD_ON_CHANGE,
    code_version=code_version_of("sthelar_platform.tiling.exports", "sthelar_platform.registration.record",
                                 configs=("tiling", "categories")),
    group_name="exports",
    kinds={"python", "zarr", "numpy", "png"},
    description="exports/<slide_id>/: cell_labels.parquet, cellvit/<mag>/<grouping>/, pannuke/<mag>/<grouping>/ "
                "and sdata.zarr (images, boundaries, labelled cell table, patches with QC).",
)
def slide_export(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource) -> MaterializeResult:
    from sthelar_platform.tiling import exports as export_lib

    slide_id = validate_slide_id(context.partition_key)
    final = storage.layout.exports / slide_id
    r = registration_of(storage, slide_id)

    def compute(out: Path) -> StageOutput[None]:
        s = export_lib.write_slide_export(slide_id, {st: storage.stage_dir(st, slide_id) for st in STAGES},
                                          r.morphology_pixel_size_um, out, load_config("tiling"), load_categories(),
                                          lambda step: context.log.info(f"{slide_id}: exporting {step}"))
        return StageOutput({**s, "dagster/row_count": sum(s["cellvit"].values()),
                            "read_with": MetadataValue.md(f"`spatialdata.read_zarr('{SlideExportFolder(final).sdata}')`")},
                           None)

    return run_slide_stage(context, "slide_export", storage, lineage, compute, final=final,
                           inputs=("segmentation_agreement", "registered_he", "cell_types", "cell_counts")).result()
