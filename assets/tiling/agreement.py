"""Per-patch agreement between the Xenium nucleus masks and the H&E segmentation, and its blocking check."""

from pathlib import Path
from typing import TYPE_CHECKING

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets._runtime import StageOutput, code_version_of, compute_class, md_image, run_slide_stage
from assets.annotation.reference_atlas import REBUILD_ON_CHANGE
from assets.partitions import slides_partitions
from assets.tiling.patches import MAGNIFICATIONS, patches_20x, patches_40x
from assets.tiling.reference_segmentation import reference_segmentation
from resources import LineageResource, StorageResource
from sthelar_platform.core.config import AgreementConfig, load_config
from sthelar_platform.core.ids import validate_slide_id
from sthelar_platform.core.warehouse import AgreementFolder, HEImageFolder, PatchesFolder

if TYPE_CHECKING:
    from sthelar_platform.tiling.agreement import SlideAgreement


@asset(
    **compute_class("segmentation_agreement"),
    partitions_def=slides_partitions,
    deps=[patches_40x, patches_20x, reference_segmentation],
    check_specs=[AssetCheckSpec(
        "patch_quality", asset="segmentation_agreement", blocking=True, partitions_def=slides_partitions,
        description="Fraction of flagged patches (low Jaccard, out of focus, marker ink) per magnification within "
                    "tiling.yaml. Blocks this slide's exports when too many patches are unusable.")],
    automation_condition=REBUILD_ON_CHANGE,
    code_version=code_version_of("sthelar_platform.tiling.agreement", configs=("tiling",)),
    group_name="patches",
    kinds={"python", "parquet", "duckdb"},
    description="Dice, Jaccard, binary PQ and detection F1 per patch (Xenium masks as truth); patches flagged "
                "for low agreement, defocus or marker ink; one patch_qc row per patch in the lineage DB.",
)
def segmentation_agreement(context: AssetExecutionContext, storage: StorageResource,
                           lineage: LineageResource) -> MaterializeResult:
    from sthelar_platform.tiling import agreement as agreement_lib

    slide_id = validate_slide_id(context.partition_key)
    cfg = load_config("tiling")
    patch_dirs = {mag: storage.stage_dir(PatchesFolder.stage_of(mag), slide_id) for mag in MAGNIFICATIONS}

    def compute(out: Path) -> "StageOutput[SlideAgreement]":
        res = agreement_lib.write_slide_agreement(
            slide_id, patch_dirs, storage.stage_dir("reference_segmentation", slide_id),
            storage.folder(HEImageFolder, slide_id).image, out, cfg.agreement, cfg.patches.workers, context.log.info)
        folder = AgreementFolder(out)
        meta: dict = {"dagster/row_count": len(res.table), **res.summary}
        for key in res.summary:
            mag = key.removeprefix("agreement_")
            if folder.distributions(mag).exists():
                meta[f"distributions_{mag}"] = md_image(folder.distributions(mag), "metric distributions", 640)
                meta[f"quality_map_{mag}"] = md_image(folder.quality_map(mag), "patch Jaccard (red low, green high)", 384)
        return StageOutput(meta, res)

    run = run_slide_stage(context, "segmentation_agreement", storage, lineage, compute,
                          inputs=("patches_40x", "patches_20x", "reference_segmentation"))
    lineage.store().record_many("patch_qc", run.value.qc_rows().assign(run_id=context.run_id).to_dict("records"))
    return run.result([patch_quality(run.value.summary, cfg.agreement)])


def patch_quality(summary: dict[str, dict], acfg: AgreementConfig) -> AssetCheckResult:
    from sthelar_platform.tiling.agreement import patch_quality_failures

    failures = patch_quality_failures(summary, acfg.max_frac_flagged)
    return AssetCheckResult(
        check_name="patch_quality", passed=not failures, severity=AssetCheckSeverity.ERROR,
        description="; ".join(failures) or "within thresholds",
        metadata={**{f"frac_flagged_{k.removeprefix('agreement_')}": round(v["frac_flagged"], 4)
                     for k, v in summary.items()},
                  **{f"median_jaccard_{k.removeprefix('agreement_')}": v["jaccard"].get("median")
                     for k, v in summary.items() if "jaccard" in v},
                  **{f"skipped_{k.removeprefix('agreement_')}": v["skipped"] for k, v in summary.items() if "skipped" in v},
                  "thresholds": MetadataValue.json({
                      "flag_below_jaccard": acfg.flag_below_jaccard, "flag_focus_ratio_below": acfg.flag_focus_ratio_below,
                      "flag_ink_above": acfg.flag_ink_above, "max_frac_flagged": acfg.max_frac_flagged})},
    )
