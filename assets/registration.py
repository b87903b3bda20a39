"""Registration assets: the measured H&E -> Xenium transform, its blocking quality check, and
the H&E as a SpatialData element in the Xenium coordinate system.
"""


import json
from pathlib import Path

import numpy as np
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
from assets.ingest import he_image, xenium_slide
from assets.partitions import slides_partitions
from resources import LineageResource, SlideCatalogResource, StorageResource
from sthelar_platform.core.config import load_config
from sthelar_platform.core.errors import InputError
from sthelar_platform.core.ids import validate_slide_id
from sthelar_platform.registration import registered_he as registered_lib
from sthelar_platform.registration import slide as stage_lib
from sthelar_platform.registration import transform as reg_lib


@asset(
    **compute_class("he_registration"),
    partitions_def=slides_partitions,
    deps=[xenium_slide, he_image],
    code_version=code_version_of(reg_lib, stage_lib, configs=("pipeline",)),
    group_name="registration",
    kinds={"python", "json"},
    description="H&E -> Xenium affine (alignment CSV refined, or estimated automatically) with residuals in µm.",
)
def he_registration(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource,
                    catalog: SlideCatalogResource) -> MaterializeResult:
    spec = catalog.get(context.partition_key)
    cfg = load_config("pipeline")["registration"]
    xen_dir, he_dir = storage.stage_dir("xenium_slide", spec.slide_id), storage.stage_dir("he_image", spec.slide_id)
    holder: dict = {}

    def compute(out: Path) -> dict:
        r = stage_lib.register_slide(xen_dir, he_dir, spec.alignment_csv, out, cfg,
                                     load_config("pipeline").he_image.magnification_um_per_px)
        holder["r"] = r
        q = r.qc
        context.log.info(f"{spec.slide_id}: {q.source} registration, median residual {q.median_residual_um:.2f} µm, "
                         f"p90 {q.p90_residual_um:.2f} µm, {q.matched_fraction:.1%} of Xenium nuclei matched")
        for note in r.notes:
            context.log.warning(f"{spec.slide_id}: {note}")
        for failure in r.failures:
            context.log.warning(f"{spec.slide_id}: registration below threshold: {failure}")
        return {
            "source": q.source, "median_residual_um": round(q.median_residual_um, 3),
            "p90_residual_um": round(q.p90_residual_um, 3), "matched_fraction": round(q.matched_fraction, 4),
            "n_he_nuclei": q.n_he_nuclei, "n_xenium_nuclei": q.n_xenium_nuclei,
            "n_level0_centroids": r.n_level0_centroids, "n_level0_pairs_in_final_fit": q.n_level0_pairs,
            "he_pixel_size_um": r.he_pixel_size_um, "implied_he_pixel_size_um": round(r.implied_he_pixel_size_um, 4),
            "magnification": r.magnification, "transform_he_px_to_morphology_px": q.transform,
            "residual_grid_um": q.residual_grid_um, "within_thresholds": r.passed, "failures": r.failures,
            "nonrigid": q.nonrigid_note or "off",
            "nonrigid_median_residual_um": round(q.nonrigid_median_residual_um, 3)
            if q.nonrigid_median_residual_um is not None else "n/a",
            "notes": r.notes,
            "csv_as_given": "none" if not r.csv_given else
            f"median {r.csv_median_residual_um:.2f} µm, {r.csv_matched_fraction:.1%} matched",
            "overlay": md_image(out / "overlay.png", "H&E with Xenium nucleus outlines", 384),
            "overlay_zoom": md_image(out / "overlay_zoom.png", "full-resolution crop with Xenium nucleus outlines", 384),
            "residual_map": md_image(out / "residual_map.png", "median residual per region (µm)", 256),
        }

    result = run_slide_stage(context, "he_registration", storage, lineage, compute, inputs=("xenium_slide", "he_image"))
    r: stage_lib.SlideRegistration = holder["r"]
    lineage.store().record("registration_qc", {
        "run_id": context.run_id, "slide_id": spec.slide_id, "source": r.qc.source,
        "median_residual_um": r.qc.median_residual_um, "p90_residual_um": r.qc.p90_residual_um,
        "matched_fraction": r.qc.matched_fraction, "transform": json.dumps(r.he_px_to_um.tolist()),
        "transform_he_px_to_morphology_px": json.dumps(r.qc.transform), "passed": r.passed,
        "n_he_nuclei": r.qc.n_he_nuclei, "n_xenium_nuclei": r.qc.n_xenium_nuclei,
        "residual_grid_um": json.dumps(r.qc.residual_grid_um), "he_pixel_size_um": r.he_pixel_size_um,
        "implied_he_pixel_size_um": r.implied_he_pixel_size_um, "magnification": r.magnification,
        "csv_median_residual_um": r.csv_median_residual_um, "csv_matched_fraction": r.csv_matched_fraction,
        "failures": json.dumps(r.failures), "notes": json.dumps(r.notes),
        "nonrigid_kept": r.warp is not None, "nonrigid_median_residual_um": r.qc.nonrigid_median_residual_um,
        "nonrigid_max_displacement_um": r.qc.nonrigid_max_displacement_um})
    return result


def registration_of(storage: StorageResource, slide_id: str) -> stage_lib.SlideRegistration:
    """The slide's registration result; missing output is an InputError naming the asset to run."""
    path = storage.stage_dir("he_registration", validate_slide_id(slide_id)) / "registration.json"
    if not path.exists():
        raise InputError(path, "no registration result", "materialize he_registration for this slide first")
    return stage_lib.SlideRegistration.read(path)


def passed_registration_of(storage: StorageResource, slide_id: str) -> stage_lib.SlideRegistration:
    """The slide's registration, refusing one that failed its thresholds.

    The blocking check normally stops downstream assets first; this guards runs that select
    a downstream asset alone.
    """
    r = registration_of(storage, slide_id)
    if not r.passed:
        raise InputError(storage.stage_dir("he_registration", slide_id) / "registration.json",
                         f"registration failed its quality thresholds ({'; '.join(r.failures)})",
                         "fix the alignment CSV or the H&E for this slide and materialize he_registration again")
    return r


@asset_check(
    asset=he_registration,
    partitions_def=slides_partitions,
    blocking=True,
    description="Median / p90 residual, matched fraction and implied pixel size within config/pipeline.yaml "
                "thresholds. Blocks registered_he and everything downstream of it for this slide only.",
)
def registration_quality(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    r = registration_of(storage, context.partition_key)
    cfg = load_config("pipeline")["registration"]
    return AssetCheckResult(
        passed=r.passed, severity=AssetCheckSeverity.ERROR,
        description="within thresholds" if r.passed else "; ".join(r.failures),
        metadata={"median_residual_um": round(r.qc.median_residual_um, 3),
                  "p90_residual_um": round(r.qc.p90_residual_um, 3),
                  "matched_fraction": round(r.qc.matched_fraction, 4), "source": r.qc.source,
                  "implied_he_pixel_size_um": round(r.implied_he_pixel_size_um, 4),
                  "thresholds": MetadataValue.json({k: cfg[k] for k in (
                      "max_median_residual_um", "max_p90_residual_um", "min_matched_fraction", "pixel_size_tolerance")}),
                  "failures": MetadataValue.json(r.failures)},
    )


@asset_check(
    asset=he_registration,
    partitions_def=slides_partitions,
    description="Warns when the alignment CSV as given (before refinement) does not fit the nuclei.",
)
def alignment_csv_agreement(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    r = registration_of(storage, context.partition_key)
    cfg = load_config("pipeline")["registration"]
    if not r.csv_given:
        return AssetCheckResult(passed=True, severity=AssetCheckSeverity.WARN, description="no alignment CSV given",
                                metadata={"csv_given": False})
    ok = (r.csv_matched_fraction >= cfg["min_matched_fraction"]
          and r.csv_median_residual_um <= cfg["max_median_residual_um"])
    return AssetCheckResult(
        passed=bool(ok), severity=AssetCheckSeverity.WARN,
        description=("the CSV fits" if ok else
                     f"the CSV as given matches {r.csv_matched_fraction:.1%} of nuclei at median "
                     f"{r.csv_median_residual_um:.2f} µm; the platform used the {r.qc.source} transform instead"),
        metadata={"csv_given": True, "csv_matched_fraction": round(r.csv_matched_fraction, 4),
                  "csv_median_residual_um": round(r.csv_median_residual_um, 3), "used": r.qc.source,
                  "notes": MetadataValue.json(r.notes)},
    )


@asset(
    **compute_class("registered_he"),
    partitions_def=slides_partitions,
    deps=[he_registration, xenium_slide, he_image],
    code_version=code_version_of(registered_lib),
    group_name="registration",
    kinds={"python", "zarr"},
    description="The H&E registered into the Xenium 'global' coordinate system: sdata.zarr (nucleus boundaries), "
                "the H&E hard-linked (never copied) and its Affine; open_registered_he gives one SpatialData.",
)
def registered_he(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource) -> MaterializeResult:
    slide_id = validate_slide_id(context.partition_key)
    r = passed_registration_of(storage, slide_id)
    he_path = storage.stage_dir("he_image", slide_id) / "he_image.ome.tif"
    boundaries = storage.stage_dir("xenium_slide", slide_id) / "nucleus_boundaries.parquet"
    final = storage.stage_dir("registered_he", slide_id)

    def compute(out: Path) -> dict:
        info = registered_lib.write_registered_he(he_path, np.array(r.qc.transform), boundaries,
                                                  r.morphology_pixel_size_um, out)
        return {"element": registered_lib.ELEMENT, "shapes": registered_lib.SHAPES, "coordinate_system": "global",
                "level_shapes": info["levels"], "transform_source": r.qc.source,
                "image_stored_as": info["image_stored_as"],
                "read_with": MetadataValue.md("`from sthelar_platform.registration import open_registered_he; "
                                              f"open_registered_he('{final}')`")}

    return run_slide_stage(context, "registered_he", storage, lineage, compute,
                           inputs=("he_registration", "he_image", "xenium_slide"))


ASSETS = [he_registration, registered_he]
@asset_check(
    asset=he_registration,
    partitions_def=slides_partitions,
    description="Warns when the H&E had no pixel size: the size the registration implies is used downstream instead.",
)
def he_pixel_size_known(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    r = registration_of(storage, context.partition_key)
    known = r.he_pixel_size_source == "metadata"
    return AssetCheckResult(
        passed=known, severity=AssetCheckSeverity.WARN,
        description=f"pixel size from the scan's metadata ({r.he_pixel_size_um} µm/px)" if known else
        f"the scan has no pixel size: registration implies {r.implied_he_pixel_size_um:.4f} µm/px "
        f"({r.magnification}), used by patches and predictions; give the pixel size in the OME metadata to be sure",
        metadata={"he_pixel_size_source": r.he_pixel_size_source,
                  "he_pixel_size_um_implied": round(r.implied_he_pixel_size_um, 4), "notes": MetadataValue.json(r.notes)})


CHECKS = [registration_quality, alignment_csv_agreement, he_pixel_size_known]
