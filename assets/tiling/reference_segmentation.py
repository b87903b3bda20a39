"""The independent H&E nucleus segmentation of every patch (the other side of the agreement QC)."""

from pathlib import Path

from dagster import AssetExecutionContext, MaterializeResult, asset

from assets._runtime import code_version_of, compute_class, run_slide_stage
from assets.annotation.reference_atlas import REBUILD_ON_CHANGE
from assets.partitions import slides_partitions
from assets.tiling.patches import patches_20x, patches_40x
from resources import ComputeDeviceResource, LineageResource, StorageResource
from sthelar_platform.core.config import load_config
from sthelar_platform.core.ids import validate_slide_id
from sthelar_platform.tiling import reference_segmentation as segmentation_lib


@asset(
    **compute_class("reference_segmentation"),
    partitions_def=slides_partitions,
    deps=[patches_40x, patches_20x],
    automation_condition=REBUILD_ON_CHANGE,
    code_version=code_version_of(segmentation_lib, configs=("tiling",)),
    group_name="patches",
    kinds={"python", "numpy"},
    description="Nucleus instances segmented from the H&E pixels alone (classical watershed by default; a trained "
                "CellViT with reference_segmentation.method: cellvit in config/tiling.yaml), one inst_map per patch "
                "and magnification.",
)
def reference_segmentation(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource,
                           compute: ComputeDeviceResource) -> MaterializeResult:
    slide_id = validate_slide_id(context.partition_key)
    cfg = load_config("tiling")
    rcfg = cfg["reference_segmentation"]
    device = compute.resolve() if rcfg.get("method") == "cellvit" else "cpu"
    segmenter = segmentation_lib.make_segmenter(rcfg, storage.layout.root, device)

    def compute(out: Path) -> dict:
        meta: dict = {"segmenter": segmenter.name}
        for mag in ("40x", "20x"):
            def progress(done: int, total: int, mag: str = mag) -> None:
                if done % 1024 == 0:
                    context.log.info(f"{slide_id} {mag}: segmented {done}/{total} patches")

            s = segmentation_lib.segment_patches(storage.stage_dir(f"patches_{mag}", slide_id), out / mag, segmenter,
                                                 int(cfg["patches"]["label_compression"]),
                                                 int(cfg["patches"]["workers"]), progress)
            meta[f"n_patches_{mag}"] = s["n_patches"]
            meta[f"n_ref_nuclei_{mag}"] = s["n_ref_nuclei"]
        meta["dagster/row_count"] = meta["n_patches_40x"] + meta["n_patches_20x"]
        return meta

    return run_slide_stage(context, "reference_segmentation", storage, lineage, compute,
                           inputs=("patches_40x", "patches_20x"))
