"""The known H&E -> Xenium affine transform of a synthetic slide, and its alignment CSV."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class TransformSpec:
    rotation_deg: float = 0.0
    scale_jitter: float = 0.0  # relative deviation of the true H&E pixel size from the nominal one
    quarter_turns: int = 0  # 90° turns of the H&E relative to Xenium
    flip: bool = False  # mirror the H&E left-right
    margin_um: float = 40.0


def he_to_morphology_matrix(spec: TransformSpec, he_px_um: float, morph_px_um: float, extent_um: tuple[float, float]) -> tuple[np.ndarray, tuple[int, int]]:
    """3x3 matrix mapping H&E pixels to morphology pixels, and the H&E image (height, width).

    The translation puts the tissue extent (plus a margin) inside the H&E image.
    """
    s = he_px_um * (1 + spec.scale_jitter) / morph_px_um
    th = np.deg2rad(spec.rotation_deg + 90 * spec.quarter_turns)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    flip = np.diag([-1.0, 1.0]) if spec.flip else np.eye(2)
    lin = s * rot @ flip  # H&E px -> morphology px (before translation)
    w, h = extent_um
    m = spec.margin_um / morph_px_um
    corners = np.array([[-m, -m], [w / morph_px_um + m, -m], [-m, h / morph_px_um + m], [w / morph_px_um + m, h / morph_px_um + m]])
    inv = np.linalg.inv(lin)
    he_corners = corners @ inv.T
    lo = he_corners.min(0)
    size = np.ceil(he_corners.max(0) - lo).astype(int)
    mat = np.eye(3)
    mat[:2, :2] = lin
    mat[:2, 2] = lin @ lo  # H&E pixel (0, 0) sits at the lower corner of the covered extent
    return mat, (int(size[1]), int(size[0]))


def write_alignment_csv(path: str | Path, matrix: np.ndarray) -> None:
    """Xenium-Explorer layout: three lines of three comma-separated numbers, no header."""
    Path(path).write_text("\n".join(",".join(f"{v:.12g}" for v in row) for row in matrix) + "\n")
