"""Model evaluation as CellViT / HoVer-Net report it: detection F1, per-class F1 (HoVer-Net's
weighted formula), binary PQ and multi-class PQ (PanNuke's convention: per patch, the mean over
the classes present in its ground truth; a class only predicted there is not counted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from sthelar_platform.model.cellvit.postprocess import instance_types
from sthelar_platform.tiling.agreement import patch_agreement


def _pairs(truth_xy: np.ndarray, pred_xy: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    if len(truth_xy) == 0 or len(pred_xy) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    d = np.sqrt(((truth_xy[:, None] - pred_xy[None]) ** 2).sum(-1))
    r, c = linear_sum_assignment(np.where(d <= radius, d, d.max() + radius + 1))
    ok = d[r, c] <= radius
    return r[ok], c[ok]


@dataclass
class EvaluationTotals:
    """Sums over patches; ``result()`` turns them into the reported metrics."""

    n_classes: int
    radius_px: float
    tp: int = 0
    fp: int = 0
    fn: int = 0
    paired_true: list[np.ndarray] = field(default_factory=list)
    paired_pred: list[np.ndarray] = field(default_factory=list)
    unpaired_true: list[np.ndarray] = field(default_factory=list)
    unpaired_pred: list[np.ndarray] = field(default_factory=list)
    bpq: list[float] = field(default_factory=list)
    mpq: list[float] = field(default_factory=list)

    def add(self, truth_inst: np.ndarray, truth_types: np.ndarray, pred_inst: np.ndarray, pred_types: np.ndarray) -> None:
        tt, txy = instance_types(truth_inst, truth_types, self.n_classes + 1)
        pt, pxy = instance_types(pred_inst, pred_types, self.n_classes + 1)
        r, c = _pairs(txy, pxy, self.radius_px)
        self.tp += len(r)
        self.fp += len(pxy) - len(c)
        self.fn += len(txy) - len(r)
        self.paired_true.append(tt[r])
        self.paired_pred.append(pt[c])
        self.unpaired_true.append(np.delete(tt, r))
        self.unpaired_pred.append(np.delete(pt, c))
        b = patch_agreement(truth_inst, pred_inst, self.radius_px)["bpq"]
        if np.isfinite(b):
            self.bpq.append(b)
        per_class = []
        for k in range(1, self.n_classes + 1):
            t_k = np.where(truth_types == k, truth_inst, 0)
            p_k = np.where(pred_types == k, pred_inst, 0)
            if t_k.any():
                per_class.append(patch_agreement(t_k, p_k, self.radius_px)["bpq"])
        if per_class:
            self.mpq.append(float(np.mean(per_class)))

    def result(self, class_names: tuple[str, ...]) -> dict:
        det = 2 * self.tp / max(2 * self.tp + self.fp + self.fn, 1)
        pt_, pp = np.concatenate(self.paired_true or [np.zeros(0, int)]), np.concatenate(self.paired_pred or [np.zeros(0, int)])
        ut, up = np.concatenate(self.unpaired_true or [np.zeros(0, int)]), np.concatenate(self.unpaired_pred or [np.zeros(0, int)])
        per_class = {}
        for k, name in enumerate(class_names, 1):
            # HoVer-Net keeps only the paired nuclei where truth or prediction is this class, so
            # its TN term is always 0 (counting TN over all pairs would inflate every rare class)
            tp_c = int(((pt_ == k) & (pp == k)).sum())
            fp_c = int(((pt_ != k) & (pp == k)).sum())
            fn_c = int(((pt_ == k) & (pp != k)).sum())
            fp_d, fn_d = int((up == k).sum()), int((ut == k).sum())
            denom = 2 * tp_c + 2 * fp_c + 2 * fn_c + fp_d + fn_d
            support = int((pt_ == k).sum() + fn_d)
            per_class[name] = {"f1": (2 * tp_c / denom) if denom and support else float("nan"),
                               "support": support}
        return {"detection_f1": det, "bpq": float(np.mean(self.bpq)) if self.bpq else float("nan"),
                "mpq": float(np.mean(self.mpq)) if self.mpq else float("nan"), "per_class": per_class,
                "tp": self.tp, "fp": self.fp, "fn": self.fn, "n_patches": len(self.bpq)}
