"""The cross-slide training dataset: leakage-free, class-stratified splits of every exported slide."""

from pathlib import Path

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from assets._runtime import StageOutput, code_version_of, compute_class, run_slide_stage
from assets.tiling.exports import slide_export
from resources import LineageResource, SlideCatalogResource, StorageResource
from sthelar_platform.core.config import load_categories, load_config
from sthelar_platform.core.warehouse import SlideExportFolder


def _card_table(card: dict) -> str:
    rows = ["| magnification | grouping | train | val | test | dropped (straddling) | classes missing from a split |",
            "|---|---|---|---|---|---|---|"]
    for mag, groupings in card["by_magnification"].items():
        for g, d in groupings.items():
            missing = "; ".join(f"{s}: {', '.join(c)}" for s, c in d["missing_classes"].items() if c) or "none"
            rows.append(f"| {mag} | {g} | {d['patches']['train']} | {d['patches']['val']} | {d['patches']['test']} | "
                        f"{d['dropped_straddling']} | {missing} |")
    return "\n".join(rows)


def _layouts_table(card: dict, root: Path) -> str:
    rows = ["| layout | folder | patches per split / fold |", "|---|---|---|"]
    for name, parts in card["layouts"].items():
        for part, counts in parts.items():
            rows.append(f"| {name} | `{root / name / part}` | {', '.join(f'{k}: {v}' for k, v in counts.items())} |")
    return "\n".join(rows)


@asset(
    **compute_class("training_dataset"),
    deps=[slide_export],
    code_version=code_version_of("sthelar_platform.model.dataset", configs=("training", "categories")),
    group_name="training",
    kinds={"python", "png", "numpy"},
    description="exports/dataset/<mag>/<grouping>/: CellViT-style folders across slides with splits.csv (by slide "
                "or spatial block, never by overlapping patch; one split for 40x and 20x), class weights and a "
                "dataset card; plus the same split packaged for the STHELAR fork (sthelar/), the original CellViT "
                "trainer (cellvit_folds/) and Hugging Face datasets (hf/).",
)
def training_dataset(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource,
                     catalog: SlideCatalogResource) -> MaterializeResult:
    from sthelar_platform.model import dataset as dataset_lib

    exports = storage.layout.exports
    slides: list[str] = []
    skipped: list[str] = []
    patients: dict[str, str | None] = {}
    for spec in catalog.list():
        (slides if SlideExportFolder(exports / spec.slide_id).cellvit.is_dir() else skipped).append(spec.slide_id)
        patients[spec.slide_id] = spec.patient_id
    if skipped:
        context.log.warning(f"no export yet (left out of the dataset): {', '.join(skipped)}")

    def compute(out: Path) -> StageOutput[None]:
        card = dataset_lib.write_training_dataset(exports, slides, out, load_config("training"),
                                                  load_categories(), lambda step: context.log.info(f"writing {step}"),
                                                  patients=patients)
        return StageOutput({
            "slides": slides, "slides_without_export": skipped, "split": card["split"],
            "dagster/row_count": sum(card["groupings"][next(iter(card["groupings"]))]["patches"].values()),
            "dataset_card": MetadataValue.md(_card_table(card)),
            "layouts": MetadataValue.md(_layouts_table(card, storage.layout.dataset)), "card": card}, None)

    return run_slide_stage(context, "training_dataset", storage, lineage, compute, final=storage.layout.dataset).result()
