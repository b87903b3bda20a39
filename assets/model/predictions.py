"""Whole-slide CellViT predictions per slide, linked back to the Xenium cells and their labels."""

from pathlib import Path
from typing import TYPE_CHECKING

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from assets._runtime import StageOutput, code_version_of, compute_class, run_slide_stage
from assets.annotation.labels import cell_types
from assets.annotation.reference_atlas import REBUILD_ON_CHANGE
from assets.ingest import he_image, xenium_slide
from assets.model.training import GROUPINGS, cellvit_detailed, cellvit_grouped
from assets.partitions import slides_partitions
from assets.registration import he_registration, passed_registration_of
from resources import ComputeDeviceResource, LineageResource, StorageResource
from sthelar_platform.core.config import config_path, load_categories, load_config
from sthelar_platform.core.errors import ConfigError, require_stage_output
from sthelar_platform.core.ids import validate_slide_id
from sthelar_platform.core.warehouse import CellTypesFolder, HEImageFolder, ModelFolder, XeniumSlideFolder

if TYPE_CHECKING:
    import pandas as pd


def _agreement_md(agreement: "pd.DataFrame") -> str:
    rows = ["| class | Xenium | predicted | precision | recall | F1 |", "|---|---|---|---|---|---|"]
    rows += [f"| {r.class_name} | {r.n_xenium} | {r.n_predicted} | {r.precision:.3f} | {r.recall:.3f} | {r.f1:.3f} |"
             for r in agreement.itertuples()]
    return "\n".join(rows)


@asset(
    partitions_def=slides_partitions,
    deps=[cellvit_detailed, cellvit_grouped, he_registration, he_image, xenium_slide, cell_types],
    automation_condition=REBUILD_ON_CHANGE,
    code_version=code_version_of("sthelar_platform.model.predictions", "sthelar_platform.model.cellvit.inference",
                                 "sthelar_platform.registration.record", configs=("training", "tiling", "categories", "pipeline.he_image")),
    group_name="predictions",
    kinds={"python", "pytorch", "parquet"},
    **compute_class("slide_predictions"),
    description="Every tissue tile of the slide predicted by the trained CellViT (batched, overlapping tiles merged "
                "so each nucleus is kept once), each nucleus linked to the Xenium cell it overlaps, and the agreement "
                "with the transcript-derived labels per class (lineage table prediction_agreement).",
)
def slide_predictions(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource,
                      compute: ComputeDeviceResource) -> MaterializeResult:
    from sthelar_platform.model import predictions as predictions_lib
    from sthelar_platform.model.cellvit import inference

    slide_id = validate_slide_id(context.partition_key)
    r = passed_registration_of(storage, slide_id)
    cfg = load_config("training")
    grouping = cfg.inference.grouping
    if grouping not in GROUPINGS:
        raise ConfigError(config_path("training"), "inference.grouping", f"{grouping!r} is not a trained grouping",
                          f"set it to one of {', '.join(GROUPINGS)}")
    ckpt = require_stage_output(ModelFolder(storage.layout.models / f"cellvit_{grouping}").best, f"cellvit_{grouping}")
    device = compute.resolve()
    model = inference.load_model(ckpt, device, cfg.postprocess)
    mid = inference.model_id(ckpt)

    def compute_fn(out: Path) -> "StageOutput[pd.DataFrame]":
        def progress(done: int, total: int) -> None:
            if done % 10 == 0 or done == total:
                context.log.info(f"{slide_id}: region {done}/{total}")

        s, agreement = predictions_lib.predict_slide(
            slide_id, storage.folder(HEImageFolder, slide_id).image,
            storage.folder(XeniumSlideFolder, slide_id).nucleus_boundaries,
            storage.folder(CellTypesFolder, slide_id).cell_labels, r.he_px_to_um,
            r.implied_he_pixel_size_um, model, mid, out, load_config("tiling"), cfg, load_categories(),
            load_config("pipeline").he_image.magnification_um_per_px, progress, r.warp)
        context.log.info(f"{slide_id}: {s['n_predicted']} nuclei predicted on {s['n_tiles']} tiles "
                         f"({s['tiles_per_s']:.1f} tiles/s on {device}); {s['n_linked']} linked to Xenium cells, "
                         f"label accuracy {s['label_accuracy']:.3f}")
        return StageOutput({**s, "dagster/row_count": s["n_predicted"], "device": device,
                            "agreement_by_class": MetadataValue.md(_agreement_md(agreement))}, agreement)

    run = run_slide_stage(context, "slide_predictions", storage, lineage, compute_fn,
                          inputs=("cellvit_detailed", "cellvit_grouped", "he_registration", "cell_types"))
    rows = run.value.assign(slide_id=slide_id, model_id=mid, grouping=grouping, run_id=context.run_id)
    lineage.store().record_many("prediction_agreement", rows.to_dict("records"))
    return run.result()
