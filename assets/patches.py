"""Patch assets: 256 px H&E tiles with nucleus instance, cell-type and cell-id masks, at 40x and 20x."""

from pathlib import Path

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from assets._runtime import code_version_of, run_slide_stage
from assets.annotation import cell_types
from assets.ingest import he_image, xenium_slide
from assets.partitions import slides_partitions
from assets.registration import he_registration, passed_registration_of
from resources import LineageResource, SlideCatalogResource, StorageResource
from sthelar_platform import masks, patches
from sthelar_platform.categories import load_categories
from sthelar_platform.config import load_config
from sthelar_platform.thumbnails import png_data_uri


def he_px_to_um(registration) -> np.ndarray:
    """3x3 affine from level-0 H&E pixels to Xenium µm."""
    um = registration.morphology_pixel_size_um
    return np.diag([um, um, 1.0]) @ np.asarray(registration.qc.transform, float)


def _patches_asset(magnification: str):
    stage = f"patches_{magnification}"

    @asset(
        name=stage,
        partitions_def=slides_partitions,
        deps=[he_registration, he_image, xenium_slide, cell_types],
        code_version=code_version_of(patches, masks, configs=("tiling", "categories")),
        group_name="patches",
        kinds={"python", "png", "numpy"},
        description=f"{magnification} 256 px patches (64 px overlap) holding >= 1 nucleus, with inst / type "
                    "(detailed, grouped) / cell-id masks from the Xenium nucleus polygons.",
    )
    def _asset(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource,
               catalog: SlideCatalogResource) -> MaterializeResult:
        spec = catalog.get(context.partition_key)
        slide_id = spec.slide_id
        r = passed_registration_of(storage, slide_id)
        cfg = load_config("tiling")

        def compute(out: Path) -> dict:
            def progress(done: int, total: int) -> None:
                if done % 50 == 0 or done == total:
                    context.log.info(f"{slide_id} {magnification}: region {done}/{total}")

            s = patches.write_patches(
                slide_id, spec.tissue, storage.stage_dir("he_image", slide_id) / "he_image.ome.tif",
                storage.stage_dir("xenium_slide", slide_id) / "nucleus_boundaries.parquet",
                storage.stage_dir("cell_types", slide_id) / "cell_labels.parquet", he_px_to_um(r),
                r.implied_he_pixel_size_um, magnification, out, cfg, progress)
            table = pd.read_parquet(out / "patches.parquet")
            classes = load_categories().groupings["detailed"].classes
            per_class = np.sum(table["counts_detailed"].tolist(), axis=0) if len(table) else np.zeros(len(classes), int)
            context.log.info(f"{slide_id} {magnification}: {s['n_patches']} patches kept of {s['n_tissue']} on tissue, "
                             f"{s['n_repaired_polygons']} polygons repaired, {s['n_empty_polygons']} empty dropped")
            return {"dagster/row_count": s["n_patches"], **{k: v for k, v in s.items() if k != "label_keys"},
                    "nuclei_per_class_detailed": {c: int(n) for c, n in zip(classes, per_class, strict=True)},
                    "label_keys": s["label_keys"],
                    "overview": MetadataValue.md(f"![patches]({png_data_uri(out / 'patches_overview.png', max_px=384)})")}

        return run_slide_stage(context, stage, storage, lineage, compute,
                               inputs=("he_registration", "he_image", "xenium_slide", "cell_types"))

    return _asset


patches_40x = _patches_asset("40x")
patches_20x = _patches_asset("20x")
