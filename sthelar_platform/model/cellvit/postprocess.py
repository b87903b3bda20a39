"""HoVer-Net post-processing: nucleus instances from the NP probability and the HV maps, then a
type per instance by majority vote of the NT prediction.

The steps and constants are those of the HoVer-Net / CellViT code: blobs under 10 px dropped,
min-max normalised HV maps, Sobel edges, markers opened with a 5x5 ellipse, and a marker size
and Sobel kernel that follow the magnification (10 px / 21 at 40x, 3 px / 11 at 20x).
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage


def _norm(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


BLOB_MIN_AREA_PX = 10  # HoVer-Net drops smaller foreground blobs at every magnification


def instances_from_maps(np_prob: np.ndarray, hv: np.ndarray, min_area_px: int = 10, sobel_ksize: int = 21,
                        edge_threshold: float = 0.4, opening_px: int = 5) -> np.ndarray:
    """(H, W) int32 instances from the nucleus probability (H, W) and the HV maps (2, H, W).

    ``min_area_px`` is the smallest marker kept, ``sobel_ksize`` the edge kernel and ``opening_px``
    the elliptical opening of the markers (per magnification, config ``postprocess``).
    """
    from skimage.segmentation import watershed

    blob = np_prob >= 0.5
    lab, n = ndimage.label(blob)
    if n == 0:
        return np.zeros(np_prob.shape, np.int32)
    blob = (np.bincount(lab.ravel()) >= BLOB_MIN_AREA_PX)[lab] & blob
    h_dir, v_dir = _norm(hv[0].astype(np.float64)), _norm(hv[1].astype(np.float64))
    sobel_h = 1 - _norm(cv2.Sobel(h_dir, cv2.CV_64F, 1, 0, ksize=sobel_ksize))
    sobel_v = 1 - _norm(cv2.Sobel(v_dir, cv2.CV_64F, 0, 1, ksize=sobel_ksize))
    overall = np.maximum(sobel_h, sobel_v) * blob
    dist = -cv2.GaussianBlur((1 - overall) * blob, (3, 3), 0)
    marker = blob & ~(overall >= edge_threshold)
    marker = cv2.morphologyEx(ndimage.binary_fill_holes(marker).astype(np.uint8), cv2.MORPH_OPEN,
                              cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (opening_px, opening_px)))
    markers, m = ndimage.label(marker)
    if m:
        markers = (np.bincount(markers.ravel()) >= min_area_px)[markers] * markers
    return watershed(dist, markers=markers, mask=blob).astype(np.int32)


def instance_types(inst: np.ndarray, type_pred: np.ndarray, n_types: int) -> tuple[np.ndarray, np.ndarray]:
    """Per instance 1..n: majority type (ignoring background votes when any foreground) and centroid (x, y)."""
    n = int(inst.max())
    if n == 0:
        return np.zeros(0, int), np.zeros((0, 2))
    fg = np.flatnonzero(inst.ravel())
    lab, t = inst.ravel()[fg], type_pred.ravel()[fg]
    votes = np.zeros((n + 1, n_types), np.int64)
    np.add.at(votes, (lab, t), 1)
    fg_votes = votes[:, 1:]
    types = np.where(fg_votes.sum(1) > 0, fg_votes.argmax(1) + 1, 0)[1:]
    ys, xs = np.divmod(fg, inst.shape[1])
    area = np.maximum(np.bincount(lab, minlength=n + 1), 1)
    cx = np.bincount(lab, weights=xs, minlength=n + 1) / area
    cy = np.bincount(lab, weights=ys, minlength=n + 1) / area
    return types, np.column_stack([cx[1:], cy[1:]])
