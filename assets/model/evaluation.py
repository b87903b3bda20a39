"""The trained models on the held-out split, with a model card and a warning check on the targets."""

import json
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from assets._runtime import code_version_of, compute_class, run_slide_stage
from assets.model.training import GROUPINGS, cellvit_detailed, cellvit_grouped
from resources import ComputeDeviceResource, LineageResource, StorageResource
from sthelar_platform.core.config import load_config
from sthelar_platform.core.errors import require_stage_output
from sthelar_platform.model import evaluation as evaluation_lib
from sthelar_platform.model.cellvit import evaluation, inference


@asset(
    **compute_class("model_evaluation"),
    deps=[cellvit_detailed, cellvit_grouped],
    code_version=code_version_of(evaluation_lib, evaluation, inference, configs=("training",)),
    group_name="training",
    kinds={"python", "pytorch", "duckdb"},
    description="Each trained model on the test split (held-out slides or spatial blocks): detection F1, "
                "HoVer-Net per-class F1, bPQ and mPQ, overall and per tissue; rows in lineage table model_eval.",
)
def model_evaluation(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource,
                     compute: ComputeDeviceResource) -> MaterializeResult:
    cfg = load_config("training")
    device = compute.resolve()
    layout = storage.layout
    rows: list[dict] = []

    def compute_fn(out: Path) -> dict:
        meta: dict = {}
        summary: dict = {}
        for grouping in GROUPINGS:
            mdir = layout.models / f"cellvit_{grouping}"
            ckpt = require_stage_output(mdir / "best.pt", f"cellvit_{grouping}")
            card = json.loads(require_stage_output(mdir / "model.json", f"cellvit_{grouping}").read_text())
            result = evaluation_lib.evaluate_model(ckpt, layout.exports / "dataset", cfg, device)
            o = result["overall"]
            class_f1 = evaluation_lib.mean_class_f1(o)
            context.log.info(f"{result['model_id']} on {result['n_patches']} {result['split']} patches: detection F1 "
                             f"{o['detection_f1']:.3f}, bPQ {o['bpq']:.3f}, mPQ {o['mpq']:.3f}, mean class F1 {class_f1:.3f} "
                             f"({result['patches_per_s']:.1f} patches/s on {device})")
            rows.extend(evaluation_lib.evaluation_rows(result))
            (out / f"{grouping}.json").write_text(json.dumps(result, indent=2, default=float))
            summary[grouping] = {"model_id": result["model_id"], "detection_f1": o["detection_f1"], "bpq": o["bpq"],
                                 "mpq": o["mpq"], "mean_class_f1": class_f1, "n_patches": result["n_patches"]}
            meta[f"model_card_{grouping}"] = MetadataValue.md(evaluation_lib.model_card_md(card, result))
            meta[f"bpq_{grouping}"] = o["bpq"]
            meta[f"detection_f1_{grouping}"] = o["detection_f1"]
            meta[f"mpq_{grouping}"] = o["mpq"]
            meta[f"mean_class_f1_{grouping}"] = class_f1
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        meta["summary"] = summary
        meta["dagster/row_count"] = len(rows)
        return meta

    result = run_slide_stage(context, "model_evaluation", storage, lineage, compute_fn,
                             inputs=("cellvit_detailed", "cellvit_grouped"), final=layout.models / "evaluation")
    lineage.store().record_many("model_eval", [{**r, "run_id": context.run_id} for r in rows])
    return result


def target_failures(summary: dict, targets: dict) -> list[str]:
    """Models below the configured targets (evaluation.targets in config/training.yaml), as sentences."""
    out = []
    for grouping, s in sorted(summary.items()):
        for metric, floor in sorted(targets.items()):
            v = s.get(metric)
            if v is None or not v == v or v < float(floor):
                out.append(f"{grouping}: {metric} {v if v is None else round(v, 3)} < {floor}")
    return out


@asset_check(
    asset=model_evaluation,
    description="Held-out bPQ and detection F1 against evaluation.targets in config/training.yaml. A warning: a "
                "short CPU schedule is expected to miss them.",
)
def model_targets(storage: StorageResource) -> AssetCheckResult:
    path = require_stage_output(storage.layout.models / "evaluation" / "summary.json", "model_evaluation")
    summary = json.loads(path.read_text())
    targets = load_config("training")["evaluation"]["targets"]
    failures = target_failures(summary, targets)
    return AssetCheckResult(passed=not failures, severity=AssetCheckSeverity.WARN,
                            description="; ".join(failures) or "all models meet the targets",
                            metadata={"targets": MetadataValue.json(targets), "summary": MetadataValue.json(summary)})
