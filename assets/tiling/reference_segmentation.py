"""The independent H&E nucleus segmentation of every patch (the other side of the agreement QC)."""

from pathlib import Path
from typing import TYPE_CHECKING

from dagster import AssetExecutionContext, MaterializeResult, asset

from assets._runtime import StageOutput, code_version_of, compute_class, run_slide_stage
from assets.annotation.reference_atlas import REBUILD_ON_CHANGE
from assets.partitions import slides_partitions
from assets.tiling.patches import MAGNIFICATIONS, patches_20x, patches_40x
from resources import ComputeDeviceResource, LineageResource, StorageResource
from sthelar_platform.core.config import ReferenceSegmentationConfig, load_config
from sthelar_platform.core.ids import validate_slide_id
from sthelar_platform.core.warehouse import PatchesFolder, ReferenceSegmentationFolder

if TYPE_CHECKING:
    from sthelar_platform.tiling.reference_segmentation import NucleusSegmenter

SEGMENTATION = "sthelar_platform.tiling.reference_segmentation"


def configured_segmenter(cfg: ReferenceSegmentationConfig, root: Path, device: str) -> "NucleusSegmenter":
    """The segmenter tiling.yaml names: the classical one, or a trained CellViT (built by the model stage, handed
    to tiling here, so that tiling never imports the model package).
    """
    if cfg.method == "cellvit":
        from sthelar_platform.model.cellvit.inference import cellvit_segmenter

        return cellvit_segmenter(cfg.cellvit, root, device)
    from sthelar_platform.tiling.reference_segmentation import classical_segmenter

    return classical_segmenter(cfg.classical)


def _library_entries() -> tuple[str, ...]:
    """What this asset's output depends on: the classical segmenter, or the model code behind a CellViT one."""
    if load_config("tiling").reference_segmentation.method == "cellvit":
        return (SEGMENTATION, "sthelar_platform.model.cellvit.inference")
    return (SEGMENTATION,)


@asset(
    **compute_class("reference_segmentation"),
    partitions_def=slides_partitions,
    deps=[patches_40x, patches_20x],
    automation_condition=REBUILD_ON_CHANGE,
    code_version=code_version_of(*_library_entries(), configs=("tiling",)),
    group_name="patches",
    kinds={"python", "numpy"},
    description="Nucleus instances segmented from the H&E pixels alone (classical watershed by default; a trained "
                "CellViT with reference_segmentation.method: cellvit in tiling.yaml), one inst_map per patch "
                "and magnification.",
)
def reference_segmentation(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource,
                           compute: ComputeDeviceResource) -> MaterializeResult:
    from sthelar_platform.tiling import reference_segmentation as segmentation_lib

    slide_id = validate_slide_id(context.partition_key)
    cfg = load_config("tiling")
    rcfg = cfg.reference_segmentation
    device = compute.resolve() if rcfg.method == "cellvit" else "cpu"
    segmenter = configured_segmenter(rcfg, storage.layout.root, device)

    def compute_fn(out: Path) -> StageOutput[None]:
        meta: dict = {"segmenter": segmenter.name}
        folder = ReferenceSegmentationFolder(out)
        for mag in MAGNIFICATIONS:
            def progress(done: int, total: int, mag: str = mag) -> None:
                if done % 1024 == 0:
                    context.log.info(f"{slide_id} {mag}: segmented {done}/{total} patches")

            s = segmentation_lib.segment_patches(storage.stage_dir(PatchesFolder.stage_of(mag), slide_id),
                                                 folder.magnification(mag), segmenter, cfg.patches.label_compression,
                                                 cfg.patches.workers, progress)
            meta[f"n_patches_{mag}"] = s["n_patches"]
            meta[f"n_ref_nuclei_{mag}"] = s["n_ref_nuclei"]
        meta["dagster/row_count"] = sum(meta[f"n_patches_{mag}"] for mag in MAGNIFICATIONS)
        return StageOutput(meta, None)

    return run_slide_stage(context, "reference_segmentation", storage, lineage, compute_fn,
                           inputs=tuple(PatchesFolder.stage_of(m) for m in MAGNIFICATIONS)).result()
