"""Training targets from a patch's masks: nucleus/background, HoVer-Net distance maps, types."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def hv_maps(inst: np.ndarray) -> np.ndarray:
    """(2, H, W) float32 horizontal / vertical distance of each nucleus pixel to its centroid.

    Each side of the centroid is scaled to [-1, 0] and [0, 1] separately, per instance
    (HoVer-Net's normalization), computed for all instances at once.
    """
    out = np.zeros((2,) + inst.shape, np.float32)
    fg = np.flatnonzero(inst.ravel())
    if not fg.size:
        return out
    lab = inst.ravel()[fg]
    n = int(lab.max())
    ys, xs = np.divmod(fg, inst.shape[1])
    area = np.maximum(np.bincount(lab, minlength=n + 1), 1)
    for axis, coord in enumerate((xs, ys)):
        centre = np.bincount(lab, weights=coord, minlength=n + 1) / area
        d = coord - centre[lab]
        index = np.arange(n + 1)
        neg = -np.asarray(ndimage.minimum(np.minimum(d, 0), lab, index))
        pos = np.asarray(ndimage.maximum(np.maximum(d, 0), lab, index))
        scaled = np.where(d < 0, d / np.maximum(neg[lab], 1e-6), d / np.maximum(pos[lab], 1e-6))
        out[axis].ravel()[fg] = scaled
    return out


def patch_targets(inst: np.ndarray, type_map: np.ndarray) -> dict[str, np.ndarray]:
    """``np`` (H, W) int64 0/1, ``hv`` (2, H, W) float32, ``nt`` (H, W) int64 (0 = background)."""
    return {"np": (inst > 0).astype(np.int64), "hv": hv_maps(inst), "nt": type_map.astype(np.int64)}
