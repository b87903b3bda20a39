"""CellViT models trained on the cross-slide training dataset, one per class grouping."""

from pathlib import Path

from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult, MetadataValue, asset

from assets._runtime import StageOutput, code_version_of, compute_class, md_image, run_slide_stage
from assets.model.dataset import training_dataset
from resources import ComputeDeviceResource, LineageResource, StorageResource
from sthelar_platform.core.config import load_config
from sthelar_platform.core.errors import InputError
from sthelar_platform.core.warehouse import ModelFolder

CODE_VERSION = code_version_of("sthelar_platform.model.training", configs=("training",))


def _history_md(history: list[dict]) -> str:
    rows = ["| epoch | train loss | val loss | patches/s | s |", "|---|---|---|---|---|"]
    rows += [f"| {h['epoch']} | {h['train_loss']:.4f} | {h['val_loss']:.4f} | {h['patches_per_s']:.1f} | "
             f"{h['seconds']:.1f} |" for h in history]
    return "\n".join(rows)


def _cellvit_asset(grouping: str) -> AssetsDefinition:
    name = f"cellvit_{grouping}"

    @asset(
        name=name,
        deps=[training_dataset],
        code_version=CODE_VERSION,
        group_name="training",
        kinds={"python", "pytorch"},
        **compute_class(name),
        description=f"CellViT (ViT encoder + UNETR decoder, NP / HV / NT + tissue heads) trained on the "
                    f"{grouping} grouping of the training dataset: models/{name}/best.pt with its model card, "
                    "loss curves and per-epoch metrics (lineage table model_training). Resumes a killed run.",
    )
    def _asset(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource,
               compute: ComputeDeviceResource) -> MaterializeResult:
        from sthelar_platform.model import training as training_lib

        cfg = load_config("training")
        device = compute.resolve()
        layout = storage.layout
        store = lineage.store()
        dataset_version = store.latest_data_version("training_dataset", None)
        if not dataset_version:
            raise InputError(layout.dataset, "no successful training_dataset materialization recorded",
                             "materialize training_dataset first")
        size, _ = training_lib.schedule_for(cfg, device)

        def on_epoch(row: dict) -> None:
            context.log.info(f"{name} epoch {row['epoch']}: train {row['train_loss']:.4f}, val {row['val_loss']:.4f} "
                             f"({row['patches_per_s']:.1f} patches/s on {device})")
            store.record("model_training", {
                "run_id": context.run_id, "model_key": name, "grouping": grouping, "epoch": int(row["epoch"]),
                "train_loss": row["train_loss"], "val_loss": row["val_loss"], "seconds": row["seconds"],
                "patches_per_s": row["patches_per_s"], "device": device, "size": size,
                "dataset_version": dataset_version})

        def compute_fn(out: Path) -> StageOutput[None]:
            context.log.info(f"{name}: training CellViT-{size} on {device} (dataset version {dataset_version[:12]})")
            card, history = training_lib.train_cellvit(layout.dataset, grouping, cfg, device,
                                              layout.root / "work" / "training", out, dataset_version, CODE_VERSION,
                                              layout.root, on_epoch)
            return StageOutput({"model_card": card, "device": device, "size": size, "best_val_loss": card["best_val_loss"],
                    "best_epoch": card["best_epoch"], "epochs_run": card["epochs_run"],
                    "resumed_from_epoch": card["resumed_from_epoch"], "n_parameters": card["n_parameters"],
                    "train_patches_per_s": round(card["train_patches_per_s"], 2),
                    "loss_curve": md_image(ModelFolder(out).loss_curve, "loss curves", 500),
                    "history": MetadataValue.md(_history_md(history)), "dagster/row_count": len(history)}, None)

        return run_slide_stage(context, name, storage, lineage, compute_fn, inputs=("training_dataset",),
                               final=layout.models / name).result()

    return _asset


# the class groupings a model is trained for (sthelar_platform/config/categories.yaml); evaluation and predictions use the same
GROUPINGS = ("detailed", "grouped")
cellvit_detailed, cellvit_grouped = (_cellvit_asset(g) for g in GROUPINGS)
