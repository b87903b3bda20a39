"""Per-patch agreement between the Xenium nucleus masks and the H&E segmentation, and its blocking check."""

import json
from pathlib import Path

import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from assets._runtime import code_version_of, compute_class, md_image, run_slide_stage
from assets.annotation.reference_atlas import REBUILD_ON_CHANGE
from assets.partitions import slides_partitions
from assets.tiling.patches import patches_20x, patches_40x
from assets.tiling.reference_segmentation import reference_segmentation
from resources import LineageResource, StorageResource
from sthelar_platform.core.config import load_config
from sthelar_platform.core.errors import InputError, require_stage_output
from sthelar_platform.core.ids import validate_slide_id
from sthelar_platform.core.imaging import open_pyramid
from sthelar_platform.tiling import agreement as agreement_lib
from sthelar_platform.tiling.patches import PatchLevel, draw_patch_overview

QC_COLUMNS = ["slide_id", "magnification", "patch_id", "x0", "y0", "n_nuclei", "dice", "jaccard", "bpq", "det_f1",
              "flagged", "focus_ratio", "ink_fraction", "flag_reasons"]


@asset(
    **compute_class("segmentation_agreement"),
    partitions_def=slides_partitions,
    deps=[patches_40x, patches_20x, reference_segmentation],
    automation_condition=REBUILD_ON_CHANGE,
    code_version=code_version_of(agreement_lib, configs=("tiling",)),
    group_name="patches",
    kinds={"python", "parquet", "duckdb"},
    description="Dice, Jaccard, binary PQ and detection F1 per patch (Xenium masks as truth); patches flagged "
                "for low agreement, defocus or marker ink; one patch_qc row per patch in the lineage DB.",
)
def segmentation_agreement(context: AssetExecutionContext, storage: StorageResource,
                           lineage: LineageResource) -> MaterializeResult:
    slide_id = validate_slide_id(context.partition_key)
    cfg = load_config("tiling")
    acfg = cfg["agreement"]
    he_path = storage.stage_dir("he_image", slide_id) / "he_image.ome.tif"
    frames: list[pd.DataFrame] = []
    holder: dict[str, pd.DataFrame] = {}

    def compute(out: Path) -> dict:
        meta: dict = {}
        for mag in ("40x", "20x"):
            pdir = storage.stage_dir(f"patches_{mag}", slide_id)
            ps = json.loads(require_stage_output(pdir / "summary.json", f"patches_{mag}").read_text())
            if "skipped" in ps:  # e.g. no 40x level on a 20x-only scan: nothing to compare, not a failure
                context.log.warning(f"{slide_id} {mag}: skipped ({ps['skipped']})")
                meta[f"agreement_{mag}"] = {"n_patches": 0, "n_flagged": 0, "frac_flagged": 0.0,
                                            "skipped": ps["skipped"]}
                continue
            frame = agreement_lib.slide_agreement(pdir, storage.stage_dir("reference_segmentation", slide_id) / mag,
                                                  acfg["detection_radius_px"][mag], acfg["match_iou"],
                                                  acfg["flag_below_jaccard"], int(cfg["patches"]["workers"]),
                                                  focus_ratio_below=acfg["flag_focus_ratio_below"],
                                                  ink_above=acfg["flag_ink_above"])
            frames.append(frame)
            dist = agreement_lib.distribution_summary(frame)
            agreement_lib.histogram_png(frame, out / f"distributions_{mag}.png", f"{slide_id} {mag}")
            lv = PatchLevel(mag, ps["level"], ps["downsample"], ps["um_per_px"])
            draw_patch_overview(he_path, open_pyramid(he_path), frame, lv, ps["size_px"], out / f"quality_map_{mag}.png",
                                values=frame["jaccard"].to_numpy())
            by_reason = ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in dist["n_flagged_by_reason"].items())
            context.log.info(f"{slide_id} {mag}: {dist['n_flagged']}/{dist['n_patches']} patches flagged ({by_reason}); "
                             f"median Jaccard {dist['jaccard'].get('median', float('nan'))}")
            meta[f"agreement_{mag}"] = dist
            meta[f"distributions_{mag}"] = md_image(out / f"distributions_{mag}.png", "metric distributions", 640)
            meta[f"quality_map_{mag}"] = md_image(out / f"quality_map_{mag}.png", "patch Jaccard (red low, green high)",
                                                 384)
        if not frames:
            raise InputError(storage.stage_dir("patches_20x", slide_id), "no magnification has patches "
                             "(both skipped: the scan is coarser than 20x)", "scan the slide at 20x or 40x")
        table = holder["table"] = pd.concat(frames, ignore_index=True)
        table.to_parquet(out / "agreement.parquet")
        agreement_lib.write_json(out / "summary.json", {k: v for k, v in meta.items() if k.startswith("agreement_")})
        meta["dagster/row_count"] = len(table)
        return meta

    result = run_slide_stage(context, "segmentation_agreement", storage, lineage, compute,
                             inputs=("patches_40x", "patches_20x", "reference_segmentation"))
    rows = holder["table"][QC_COLUMNS].assign(run_id=context.run_id).to_dict("records")
    lineage.store().record_many("patch_qc", rows)
    return result


def patch_quality_failures(summary: dict, max_frac_flagged: float) -> list[str]:
    """Magnifications whose fraction of flagged patches exceeds the threshold, as sentences."""
    out = []
    for key, dist in sorted(summary.items()):
        mag = key.removeprefix("agreement_")
        if "skipped" in dist:
            continue
        if dist["n_patches"] == 0:
            out.append(f"{mag}: no patches to assess")
        elif dist["frac_flagged"] > max_frac_flagged:
            out.append(f"{mag}: {dist['frac_flagged']:.1%} of {dist['n_patches']} patches flagged "
                       f"(> {max_frac_flagged:.0%})")
    return out


@asset_check(
    asset=segmentation_agreement,
    partitions_def=slides_partitions,
    blocking=True,
    description="Fraction of flagged patches (low Jaccard, out of focus, marker ink) per magnification within "
                "config/tiling.yaml. Blocks this slide's exports when too many patches are unusable.",
)
def patch_quality(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    slide_id = validate_slide_id(context.partition_key)
    path = require_stage_output(storage.stage_dir("segmentation_agreement", slide_id) / "summary.json",
                                "segmentation_agreement")
    summary = json.loads(path.read_text())
    acfg = load_config("tiling")["agreement"]
    failures = patch_quality_failures(summary, acfg["max_frac_flagged"])
    return AssetCheckResult(
        passed=not failures, severity=AssetCheckSeverity.ERROR,
        description="; ".join(failures) or "within thresholds",
        metadata={**{f"frac_flagged_{k.removeprefix('agreement_')}": round(v["frac_flagged"], 4)
                     for k, v in summary.items()},
                  **{f"median_jaccard_{k.removeprefix('agreement_')}": v["jaccard"].get("median")
                     for k, v in summary.items() if "jaccard" in v},
                  **{f"skipped_{k.removeprefix('agreement_')}": v["skipped"] for k, v in summary.items() if "skipped" in v},
                  "thresholds": MetadataValue.json({k: acfg[k] for k in ("flag_below_jaccard", "flag_focus_ratio_below",
                                                                        "flag_ink_above", "max_frac_flagged")})},
    )
