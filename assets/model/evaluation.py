"""The trained models on the held-out split, with a model card and a warning check on the targets."""

import json
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets._runtime import StageOutput, code_version_of, compute_class, run_slide_stage
from assets.model.training import GROUPINGS, cellvit_detailed, cellvit_grouped
from resources import ComputeDeviceResource, LineageResource, StorageResource
from sthelar_platform.core.config import load_config
from sthelar_platform.core.errors import require_stage_output
from sthelar_platform.core.warehouse import EvaluationFolder, ModelFolder


@asset(
    **compute_class("model_evaluation"),
    deps=[cellvit_detailed, cellvit_grouped],
    check_specs=[AssetCheckSpec(
        "model_targets", asset="model_evaluation",
        description="Held-out bPQ and detection F1 against evaluation.targets in training.yaml. A warning: a short "
                    "CPU schedule is expected to miss them.")],
    code_version=code_version_of("sthelar_platform.model.evaluation", configs=("training",)),
    group_name="training",
    kinds={"python", "pytorch", "duckdb"},
    description="Each trained model on the test split (held-out slides or spatial blocks): detection F1, "
                "HoVer-Net per-class F1, bPQ and mPQ, overall and per tissue; rows in lineage table model_eval.",
)
def model_evaluation(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource,
                     compute: ComputeDeviceResource) -> MaterializeResult:
    from sthelar_platform.model import evaluation as evaluation_lib

    cfg = load_config("training")
    device = compute.resolve()
    layout = storage.layout

    def compute_fn(out: Path) -> StageOutput[tuple[dict[str, dict], list[dict]]]:
        meta: dict = {}
        summary: dict = {}
        rows: list[dict] = []
        for grouping in GROUPINGS:
            model = ModelFolder(layout.models / f"cellvit_{grouping}")
            ckpt = require_stage_output(model.best, f"cellvit_{grouping}")
            card = json.loads(require_stage_output(model.card, f"cellvit_{grouping}").read_text())
            result = evaluation_lib.evaluate_model(ckpt, layout.dataset, cfg, device)
            o = result["overall"]
            class_f1 = evaluation_lib.mean_class_f1(o)
            context.log.info(f"{result['model_id']} on {result['n_patches']} {result['split']} patches: detection F1 "
                             f"{o['detection_f1']:.3f}, bPQ {o['bpq']:.3f}, mPQ {o['mpq']:.3f}, mean class F1 {class_f1:.3f} "
                             f"({result['patches_per_s']:.1f} patches/s on {device})")
            rows.extend(evaluation_lib.evaluation_rows(result))
            EvaluationFolder(out).grouping(grouping).write_text(json.dumps(result, indent=2, default=float))
            summary[grouping] = {"model_id": result["model_id"], "detection_f1": o["detection_f1"], "bpq": o["bpq"],
                                 "mpq": o["mpq"], "mean_class_f1": class_f1, "n_patches": result["n_patches"]}
            meta[f"model_card_{grouping}"] = MetadataValue.md(evaluation_lib.model_card_md(card, result))
            meta[f"bpq_{grouping}"] = o["bpq"]
            meta[f"detection_f1_{grouping}"] = o["detection_f1"]
            meta[f"mpq_{grouping}"] = o["mpq"]
            meta[f"mean_class_f1_{grouping}"] = class_f1
        EvaluationFolder(out).summary.write_text(json.dumps(summary, indent=2))
        meta["summary"] = summary
        meta["dagster/row_count"] = len(rows)
        return StageOutput(meta, (summary, rows))

    run = run_slide_stage(context, "model_evaluation", storage, lineage, compute_fn,
                          inputs=("cellvit_detailed", "cellvit_grouped"), final=layout.models / "evaluation")
    summary, rows = run.value
    lineage.store().record_many("model_eval", [{**r, "run_id": context.run_id} for r in rows])
    return run.result([model_targets(summary, cfg.evaluation.targets)])


def model_targets(summary: dict[str, dict], targets: dict[str, float]) -> AssetCheckResult:
    from sthelar_platform.model.evaluation import target_failures

    failures = target_failures(summary, targets)
    return AssetCheckResult(check_name="model_targets", passed=not failures, severity=AssetCheckSeverity.WARN,
                            description="; ".join(failures) or "all models meet the targets",
                            metadata={"targets": MetadataValue.json(targets), "summary": MetadataValue.json(summary)})
