"""Patch assets: 256 px H&E tiles with nucleus instance, cell-type and cell-id masks, at 40x and 20x."""

from pathlib import Path

from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult, asset

from assets._runtime import StageOutput, code_version_of, compute_class, md_image, run_slide_stage
from assets.annotation.labels import cell_types
from assets.annotation.reference_atlas import REBUILD_ON_CHANGE
from assets.ingest import he_image, xenium_slide
from assets.partitions import slides_partitions
from assets.registration import he_registration, passed_registration_of
from resources import LineageResource, SlideCatalogResource, StorageResource
from sthelar_platform.core.config import load_categories, load_config
from sthelar_platform.core.warehouse import CellTypesFolder, HEImageFolder, PatchesFolder, XeniumSlideFolder

MAGNIFICATIONS = ("40x", "20x")   # the patch sets every slide gets (and the agreement QC compares)


def _patches_asset(magnification: str) -> AssetsDefinition:
    stage = PatchesFolder.stage_of(magnification)

    @asset(
        **compute_class(stage),
        name=stage,
        partitions_def=slides_partitions,
        deps=[he_registration, he_image, xenium_slide, cell_types],
        automation_condition=REBUILD_ON_CHANGE,
        code_version=code_version_of("sthelar_platform.tiling.patches", "sthelar_platform.registration.record",
                                     configs=("tiling", "categories", "pipeline.he_image")),
        group_name="patches",
        kinds={"python", "png", "numpy"},
        description=f"{magnification} 256 px patches (64 px overlap) holding >= 1 nucleus, with inst / type "
                    "(detailed, grouped) / cell-id masks from the Xenium nucleus polygons.",
    )
    def _asset(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource,
               catalog: SlideCatalogResource) -> MaterializeResult:
        from sthelar_platform.tiling import patches

        spec = catalog.get(context.partition_key)
        slide_id = spec.slide_id
        r = passed_registration_of(storage, slide_id)
        cfg, categories = load_config("tiling"), load_categories()
        ranges = load_config("pipeline").he_image.magnification_um_per_px

        def compute(out: Path) -> StageOutput[None]:
            def progress(done: int, total: int) -> None:
                if done % 50 == 0 or done == total:
                    context.log.info(f"{slide_id} {magnification}: region {done}/{total}")

            s = patches.write_patches(
                slide_id, spec.tissue, storage.folder(HEImageFolder, slide_id).image,
                storage.folder(XeniumSlideFolder, slide_id).nucleus_boundaries,
                storage.folder(CellTypesFolder, slide_id).cell_labels, r.he_px_to_um,
                r.implied_he_pixel_size_um, magnification, out, cfg, categories, ranges, progress, r.warp)
            if "skipped" in s:
                context.log.warning(f"{slide_id} {magnification}: skipped: {s['skipped']}")
                return StageOutput({"dagster/row_count": 0, **s}, None)
            context.log.info(f"{slide_id} {magnification}: {s['n_patches']} patches kept of {s['n_tissue']} on tissue, "
                             f"{s['n_repaired_polygons']} polygons repaired, {s['n_empty_polygons']} empty dropped")
            return StageOutput({"dagster/row_count": s["n_patches"], **s,
                                "overview": md_image(PatchesFolder(out).overview, "patches", 384)}, None)

        return run_slide_stage(context, stage, storage, lineage, compute,
                               inputs=("he_registration", "he_image", "xenium_slide", "cell_types")).result()

    return _asset


patches_40x, patches_20x = (_patches_asset(m) for m in MAGNIFICATIONS)
