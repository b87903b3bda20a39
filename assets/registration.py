"""Registration assets: the measured H&E -> Xenium transform with its checks (run in the asset's own step),
and the H&E as a SpatialData element in the Xenium coordinate system.
"""


import json
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
from assets.ingest import he_image, xenium_slide
from assets.partitions import slides_partitions
from resources import LineageResource, SlideCatalogResource, StorageResource
from sthelar_platform.core.config import RegistrationConfig, load_config
from sthelar_platform.core.ids import validate_slide_id
from sthelar_platform.core.warehouse import HEImageFolder, RegistrationFolder, XeniumSlideFolder

if TYPE_CHECKING:
    from sthelar_platform.registration.record import SlideRegistration

RECORD = "sthelar_platform.registration.record"

CHECK_SPECS = [
    AssetCheckSpec("registration_quality", asset="he_registration", blocking=True, partitions_def=slides_partitions,
                   description="Median / p90 residual, matched fraction and implied pixel size within "
                               "sthelar_platform/config/pipeline.yaml thresholds. Blocks registered_he and everything "
                               "downstream of it for this slide only."),
    AssetCheckSpec("alignment_csv_agreement", asset="he_registration", partitions_def=slides_partitions,
                   description="Warns when the alignment CSV as given (before refinement) does not fit the nuclei."),
    AssetCheckSpec("he_pixel_size_known", asset="he_registration", partitions_def=slides_partitions,
                   description="Warns when the H&E had no pixel size: the size the registration implies is used "
                               "downstream instead."),
]


@asset(
    **compute_class("he_registration"),
    partitions_def=slides_partitions,
    deps=[xenium_slide, he_image],
    check_specs=CHECK_SPECS,
    code_version=code_version_of("sthelar_platform.registration.slide", configs=("pipeline",)),
    group_name="registration",
    kinds={"python", "json"},
    description="H&E -> Xenium affine (alignment CSV refined, or estimated automatically) with residuals in µm.",
)
def he_registration(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource,
                    catalog: SlideCatalogResource) -> MaterializeResult:
    from sthelar_platform.registration import slide as stage_lib

    spec = catalog.get(context.partition_key)
    pipeline = load_config("pipeline")
    cfg = pipeline.registration

    def compute(out: Path) -> "StageOutput[SlideRegistration]":
        r = stage_lib.register_slide(storage.stage_dir(XeniumSlideFolder.stage, spec.slide_id),
                                     storage.stage_dir(HEImageFolder.stage, spec.slide_id), spec.alignment_csv, out, cfg,
                                     pipeline.he_image.magnification_um_per_px)
        q = r.qc
        context.log.info(f"{spec.slide_id}: {q.source} registration, median residual {q.median_residual_um:.2f} µm, "
                         f"p90 {q.p90_residual_um:.2f} µm, {q.matched_fraction:.1%} of Xenium nuclei matched")
        for note in r.notes:
            context.log.warning(f"{spec.slide_id}: {note}")
        for failure in r.failures:
            context.log.warning(f"{spec.slide_id}: registration below threshold: {failure}")
        folder = RegistrationFolder(out)
        return StageOutput({
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
            "overlay": md_image(folder.overlay, "H&E with Xenium nucleus outlines", 384),
            "overlay_zoom": md_image(folder.overlay_zoom, "full-resolution crop with Xenium nucleus outlines", 384),
            "residual_map": md_image(folder.residual_map, "median residual per region (µm)", 256),
        }, r)

    run = run_slide_stage(context, "he_registration", storage, lineage, compute, inputs=("xenium_slide", "he_image"))
    r = run.value
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
    return run.result([registration_quality(r, cfg), alignment_csv_agreement(r), he_pixel_size_known(r)])


def registration_quality(r: "SlideRegistration", cfg: RegistrationConfig) -> AssetCheckResult:
    return AssetCheckResult(
        check_name="registration_quality", passed=r.passed, severity=AssetCheckSeverity.ERROR,
        description="within thresholds" if r.passed else "; ".join(r.failures),
        metadata={"median_residual_um": round(r.qc.median_residual_um, 3),
                  "p90_residual_um": round(r.qc.p90_residual_um, 3),
                  "matched_fraction": round(r.qc.matched_fraction, 4), "source": r.qc.source,
                  "implied_he_pixel_size_um": round(r.implied_he_pixel_size_um, 4),
                  "thresholds": MetadataValue.json({
                      "max_median_residual_um": cfg.max_median_residual_um, "max_p90_residual_um": cfg.max_p90_residual_um,
                      "min_matched_fraction": cfg.min_matched_fraction, "pixel_size_tolerance": cfg.pixel_size_tolerance}),
                  "failures": MetadataValue.json(r.failures)},
    )


def alignment_csv_agreement(r: "SlideRegistration") -> AssetCheckResult:
    if not r.csv_given:
        return AssetCheckResult(check_name="alignment_csv_agreement", passed=True, severity=AssetCheckSeverity.WARN,
                                description="no alignment CSV given", metadata={"csv_given": False})
    failures = r.csv_failures(load_config("pipeline").registration)
    return AssetCheckResult(
        check_name="alignment_csv_agreement", passed=not failures, severity=AssetCheckSeverity.WARN,
        description="; ".join(failures) or "the CSV fits",
        metadata={"csv_given": True, "csv_matched_fraction": round(r.csv_matched_fraction or 0.0, 4),
                  "csv_median_residual_um": round(r.csv_median_residual_um or 0.0, 3), "used": r.qc.source,
                  "notes": MetadataValue.json(r.notes)},
    )


def he_pixel_size_known(r: "SlideRegistration") -> AssetCheckResult:
    known = r.he_pixel_size_source == "metadata"
    return AssetCheckResult(
        check_name="he_pixel_size_known", passed=known, severity=AssetCheckSeverity.WARN,
        description=f"pixel size from the scan's metadata ({r.he_pixel_size_um} µm/px)" if known else
        f"the scan has no pixel size: registration implies {r.implied_he_pixel_size_um:.4f} µm/px "
        f"({r.magnification}), used by patches and predictions; give the pixel size in the OME metadata to be sure",
        metadata={"he_pixel_size_source": r.he_pixel_size_source,
                  "he_pixel_size_um_implied": round(r.implied_he_pixel_size_um, 4), "notes": MetadataValue.json(r.notes)})


def registration_of(storage: StorageResource, slide_id: str) -> "SlideRegistration":
    """The slide's registration result; missing output is an InputError naming the asset to run."""
    from sthelar_platform.registration import record as record_lib

    return record_lib.SlideRegistration.of_folder(storage.stage_dir(RegistrationFolder.stage, validate_slide_id(slide_id)))


def passed_registration_of(storage: StorageResource, slide_id: str) -> "SlideRegistration":
    """The slide's registration, refusing one that failed its thresholds (see record.passed_registration)."""
    from sthelar_platform.registration import record as record_lib

    return record_lib.passed_registration(storage.stage_dir(RegistrationFolder.stage, validate_slide_id(slide_id)))


@asset(
    **compute_class("registered_he"),
    partitions_def=slides_partitions,
    deps=[he_registration, xenium_slide, he_image],
    code_version=code_version_of("sthelar_platform.registration.registered_he", RECORD),
    group_name="registration",
    kinds={"python", "zarr"},
    description="The H&E registered into the Xenium 'global' coordinate system: sdata.zarr (nucleus boundaries), "
                "the H&E hard-linked (never copied) and its Affine; open_registered_he gives one SpatialData.",
)
def registered_he(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource) -> MaterializeResult:
    import numpy as np

    from sthelar_platform.registration import registered_he as registered_lib

    slide_id = validate_slide_id(context.partition_key)
    r = passed_registration_of(storage, slide_id)
    he = storage.folder(HEImageFolder, slide_id)
    xen = storage.folder(XeniumSlideFolder, slide_id)
    final = storage.stage_dir("registered_he", slide_id)

    def compute(out: Path) -> StageOutput[None]:
        info = registered_lib.write_registered_he(he.image, np.array(r.qc.transform), xen.nucleus_boundaries,
                                                  r.morphology_pixel_size_um, out)
        return StageOutput({
            "element": registered_lib.ELEMENT, "shapes": registered_lib.SHAPES, "coordinate_system": "global",
            "level_shapes": info["levels"], "transform_source": r.qc.source, "image_stored_as": info["image_stored_as"],
            "read_with": MetadataValue.md("`from sthelar_platform.registration import open_registered_he; "
                                          f"open_registered_he('{final}')`")}, None)

    return run_slide_stage(context, "registered_he", storage, lineage, compute,
                           inputs=("he_registration", "he_image", "xenium_slide")).result()


ASSETS = [he_registration, registered_he]
