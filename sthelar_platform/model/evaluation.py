"""A trained model on the held-out split: detection F1, per-class F1, bPQ and mPQ, overall and per tissue."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from sthelar_platform.core.config import TrainingConfig
from sthelar_platform.core.errors import InputError
from sthelar_platform.model.cellvit.evaluation import EvaluationTotals
from sthelar_platform.model.cellvit.inference import load_model, model_id
from sthelar_platform.model.training import dataset_classes, grouping_dir, split_records
from sthelar_platform.tiling.patches import load_labels


def evaluate_model(checkpoint: Path, dataset: Path, cfg: TrainingConfig, device: str = "cpu",
                   progress: Callable[[int, int], None] | None = None) -> dict:
    """Evaluate on ``evaluation.split`` of the dataset the model was trained for."""
    model = load_model(checkpoint, device, cfg.postprocess)
    grouping = model.meta.get("grouping")
    if not grouping:
        raise InputError(checkpoint, "checkpoint does not say which class grouping it was trained on",
                         "evaluate a best.pt written by a cellvit_* asset")
    gdir = grouping_dir(dataset, cfg, grouping, model.meta.get("magnification"))
    classes, _ = dataset_classes(gdir)
    if tuple(classes) != model.classes:
        raise InputError(checkpoint, f"model classes {list(model.classes)} differ from the dataset's {classes}",
                         "retrain the model on the current training dataset")
    tissues = list(model.meta.get("tissues") or ["unknown"])
    split = cfg.evaluation.split
    records = split_records(gdir, split, tissues)
    radius = float(cfg.evaluation.detection_radius_px[model.meta.get("magnification") or "40x"])
    overall = EvaluationTotals(len(classes), radius)
    per_tissue = {t: EvaluationTotals(len(classes), radius) for t in tissues}
    tissue_hits = 0
    bs = int(cfg.inference.batch_size)
    t0 = time.perf_counter()
    for start in range(0, len(records), bs):
        batch = records[start:start + bs]
        rgb = []
        for r in batch:
            bgr = cv2.imread(str(r.image), cv2.IMREAD_COLOR)
            if bgr is None:
                raise InputError(r.image, "patch image missing or unreadable", "materialize training_dataset again")
            rgb.append(bgr[..., ::-1])
        preds = model.predict(np.stack(rgb))
        for r, p in zip(batch, preds, strict=True):
            lab = load_labels(r.labels)
            for totals in (overall, per_tissue[tissues[r.tissue]]):
                totals.add(lab["inst_map"], lab["type_map"], p.inst, p.type_map)
            tissue_hits += int(p.tissue == r.tissue)
        if progress:
            progress(min(start + bs, len(records)), len(records))
    wall = time.perf_counter() - t0
    return {"model_id": model_id(checkpoint), "grouping": grouping, "split": split, "classes": classes,
            "split_by": cfg.dataset.split, "detection_radius_px": radius,
            "n_patches": len(records), "overall": overall.result(tuple(classes)),
            "per_tissue": {t: v.result(tuple(classes)) for t, v in per_tissue.items() if v.bpq or v.tp + v.fn},
            "tissue_accuracy": tissue_hits / len(records), "patches_per_s": len(records) / max(wall, 1e-9),
            "model": {k: model.meta.get(k) for k in ("size", "magnification", "dataset_version", "tissues")}}


def mean_class_f1(res: dict) -> float:
    """Mean per-class F1 over the classes the ground truth holds (NaN when it holds none)."""
    f1 = [c["f1"] for c in res["per_class"].values() if c["support"] > 0]
    return float(np.mean(f1)) if f1 else float("nan")


def evaluation_rows(result: dict) -> list[dict]:
    """Long-format rows for the lineage table ``model_eval`` (tissue / class ``all`` for the totals)."""
    rows = []
    base = {"model_id": result["model_id"], "grouping": result["grouping"], "split": result["split"]}
    scopes = [("all", result["overall"])] + list(result["per_tissue"].items())
    for tissue, res in scopes:
        for metric in ("detection_f1", "bpq", "mpq"):
            rows.append({**base, "tissue": tissue, "class_name": "all", "metric": metric, "value": res[metric]})
        rows.append({**base, "tissue": tissue, "class_name": "all", "metric": "mean_class_f1", "value": mean_class_f1(res)})
        for name, c in res["per_class"].items():
            rows.append({**base, "tissue": tissue, "class_name": name, "metric": "f1", "value": c["f1"]})
            rows.append({**base, "tissue": tissue, "class_name": name, "metric": "support", "value": c["support"]})
    rows.append({**base, "tissue": "all", "class_name": "all", "metric": "tissue_accuracy",
                 "value": result["tissue_accuracy"]})
    return rows


# What the test split holds out, per dataset.split: only slide and patient splits hold out whole slides
HELD_OUT = {"slide": "held-out slides", "patient": "held-out patients' slides",
            "block": "held-out spatial blocks of the training slides, not unseen slides"}


def model_card_md(card: dict, result: dict) -> str:
    """The model card shown in the Dagster UI: what it is, what it was trained on, how it scores."""
    o = result["overall"]
    lines = [f"### {result['model_id']}",
             f"CellViT `{card.get('size')}` ({card.get('n_parameters', 0) / 1e6:.1f} M parameters), "
             f"{card.get('magnification')} patches, grouping **{result['grouping']}**, trained on "
             f"{card.get('n_train_patches')} patches ({card.get('epochs_run')} epochs on {card.get('device')}, "
             f"best epoch {card.get('best_epoch')}), dataset version `{str(card.get('dataset_version'))[:12]}`.",
             "", f"**{result['split']}** split ({HELD_OUT.get(str(result.get('split_by')), 'held-out patches')}), "
             f"{result['n_patches']} patches: detection F1 "
             f"**{o['detection_f1']:.3f}**, bPQ **{o['bpq']:.3f}**, mPQ **{o['mpq']:.3f}**, mean class F1 "
             f"**{mean_class_f1(o):.3f}**, tissue accuracy "
             f"{result['tissue_accuracy']:.3f}.", "", "| class | F1 | support |", "|---|---|---|"]
    lines += [f"| {k} | {v['f1']:.3f} | {v['support']} |" for k, v in o["per_class"].items()]
    if result["per_tissue"]:
        lines += ["", "| tissue | detection F1 | bPQ | mPQ |", "|---|---|---|---|"]
        lines += [f"| {t} | {r['detection_f1']:.3f} | {r['bpq']:.3f} | {r['mpq']:.3f} |"
                  for t, r in result["per_tissue"].items()]
    return "\n".join(lines)


def target_failures(summary: dict[str, dict], targets: dict[str, float]) -> list[str]:
    """Models below the configured targets (evaluation.targets in training.yaml), as sentences."""
    out = []
    for grouping, s in sorted(summary.items()):
        for metric, floor in sorted(targets.items()):
            v = s.get(metric)
            if v is None or not v == v or v < float(floor):
                out.append(f"{grouping}: {metric} {v if v is None else round(v, 3)} < {floor}")
    return out
