"""The artefacts of real slides, drawn per slide for the realistic world and applied tile by tile.

Out-of-focus patches, scanner JPEG, a tissue fold, an air bubble and a pen mark live on the glass, in
the affine frame: their geometry is in glass µm (Xenium's frame before the section's deformation). The
functions that take pixel arrays work on any tile: ``ux``, ``uy`` are each pixel's glass µm and ``od``
its (h, w, 3) optical density.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from sthelar_platform.core.config import HEArtefacts


@dataclass(frozen=True)
class SlideArtefacts:
    """Where one slide's artefacts sit, in glass µm (the affine frame), or None where it has none."""

    blur: np.ndarray                 # (k, 4): centre x, y, radius, sigma
    jpeg_quality: int | None
    fold: np.ndarray | None          # (5,): segment x0, y0, x1, y1 and width
    bubble: np.ndarray | None        # (3,): centre x, y and radius
    pen: np.ndarray | None           # (m, 2) stroke
    pen_width_um: float
    pen_od: np.ndarray

    def to_dict(self) -> dict:
        def rounded(a: np.ndarray | None) -> list | None:
            return None if a is None else np.round(a, 2).tolist()

        return {"blur": rounded(self.blur), "jpeg_quality": self.jpeg_quality, "fold": rounded(self.fold),
                "bubble": rounded(self.bubble), "pen": rounded(self.pen), "pen_width_um": round(self.pen_width_um, 2),
                "pen_od": rounded(self.pen_od)}

    @classmethod
    def from_dict(cls, d: dict) -> SlideArtefacts:
        def array(v: list | None) -> np.ndarray | None:
            return None if v is None else np.asarray(v, float)

        return cls(np.asarray(d["blur"], float).reshape(-1, 4), d["jpeg_quality"], array(d["fold"]), array(d["bubble"]),
                   array(d["pen"]), float(d["pen_width_um"]), np.asarray(d["pen_od"], np.float32))

    def covers(self, xy_um: np.ndarray) -> dict[str, np.ndarray]:
        """Which (n, 2) glass points lie under each artefact: out of focus, fold, bubble, pen."""
        x, y = np.asarray(xy_um, float).T
        out = {"blur": np.zeros(len(x), bool), "fold": np.zeros(len(x), bool), "bubble": np.zeros(len(x), bool),
               "pen": np.zeros(len(x), bool)}
        for cx, cy, r, _ in self.blur:
            out["blur"] |= np.hypot(x - cx, y - cy) < r
        if self.fold is not None:
            out["fold"] = _segment_distance(x, y, self.fold) < self.fold[4] / 2
        if self.bubble is not None:
            out["bubble"] = np.hypot(x - self.bubble[0], y - self.bubble[1]) < self.bubble[2]
        if self.pen is not None:
            for seg in np.concatenate([self.pen[:-1], self.pen[1:]], axis=1):
                out["pen"] |= _segment_distance(x, y, np.append(seg, 0)) < self.pen_width_um / 2
        return out


def sample_artefacts(spec: HEArtefacts, extent_um: tuple[float, float], rng: np.random.Generator) -> SlideArtefacts:
    w, h = extent_um
    size = np.array([w, h])
    n_blur = int(rng.poisson(spec.blur_regions_per_mm2 * w * h / 1e6))
    blur = np.column_stack([rng.uniform(0, w, n_blur), rng.uniform(0, h, n_blur),
                            rng.uniform(*spec.blur_radius_um, n_blur), rng.uniform(*spec.blur_sigma_um, n_blur)])
    quality = int(rng.integers(spec.jpeg_quality[0], spec.jpeg_quality[1] + 1)) if rng.random() < spec.jpeg_probability else None
    fold = bubble = pen = None
    if rng.random() < spec.fold_probability:  # near the section's edge, where sections fold
        angle = rng.uniform(0, 2 * np.pi)
        centre = size / 2 + rng.uniform(0.25, 0.38) * size * np.array([np.cos(angle), np.sin(angle)])
        half = rng.uniform(*spec.fold_length_um) / 2 * np.array([np.cos(angle + np.pi / 2), np.sin(angle + np.pi / 2)])
        fold = np.concatenate([centre - half, centre + half, [rng.uniform(*spec.fold_width_um)]])
    if rng.random() < spec.bubble_probability:
        bubble = np.array([*(size * rng.uniform(0.15, 0.85, 2)), rng.uniform(*spec.bubble_radius_um)])
    pen_width = float(rng.uniform(*spec.pen_width_um))
    if rng.random() < spec.pen_probability:  # a wavy stroke along one side, where a pathologist circles a region
        along = np.linspace(0.15, 0.6, 60) + rng.uniform(0, 0.25)
        inset = rng.uniform(0.06, 0.14) + 0.05 * np.sin(2 * np.pi * 3 * along + rng.uniform(0, 2 * np.pi))
        across = inset if rng.random() < 0.5 else 1 - inset   # top or left / bottom or right
        u, v = (along, across) if rng.random() < 0.5 else (across, along)
        pen = np.column_stack([u * w, v * h])
    return SlideArtefacts(blur, quality, fold, bubble, pen, pen_width, np.asarray(spec.pen_od, np.float32))


def _segment_distance(ux: np.ndarray, uy: np.ndarray, seg: np.ndarray) -> np.ndarray:
    p0, p1 = seg[:2], seg[2:4]
    d = p1 - p0
    t = np.clip(((ux - p0[0]) * d[0] + (uy - p0[1]) * d[1]) / max(float(d @ d), 1e-9), 0, 1)
    return np.hypot(ux - p0[0] - t * d[0], uy - p0[1] - t * d[1])


def apply_fold(od: np.ndarray, ux: np.ndarray, uy: np.ndarray, fold: np.ndarray | None) -> None:
    """A fold doubles the section under a band and darkens its creased edges."""
    if fold is None:
        return
    dist = _segment_distance(ux, uy, fold)
    half = fold[4] / 2
    inside = np.clip((half - dist) / 1.5, 0, 1)
    crease = np.exp(-(((dist - half + 1.0) / 1.2) ** 2))  # just inside the edge
    od *= (1 + 0.9 * inside + 0.5 * crease)[..., None]


def apply_bubble(od: np.ndarray, ux: np.ndarray, uy: np.ndarray, bubble: np.ndarray | None) -> None:
    """An air bubble washes out the tissue under it and draws a dark refracting rim."""
    if bubble is None:
        return
    dist = np.hypot(ux - bubble[0], uy - bubble[1])
    inside = np.clip((bubble[2] - dist) / 2.0, 0, 1)
    od *= (1 - 0.35 * inside)[..., None]
    od += (0.5 * np.exp(-(((dist - bubble[2]) / 1.5) ** 2)))[..., None]


def pen_mask(art: SlideArtefacts, um_to_px: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """The marker stroke's coverage (0-1) on a tile; ``um_to_px`` (2x3) maps glass µm to the tile's pixels."""
    if art.pen is None:
        return None
    px = art.pen @ um_to_px[:, :2].T + um_to_px[:, 2]
    width = art.pen_width_um * float(np.sqrt(abs(np.linalg.det(um_to_px[:, :2]))))
    lo, hi = px.min(0) - width, px.max(0) + width
    if hi[0] < 0 or hi[1] < 0 or lo[0] > shape[1] or lo[1] > shape[0]:
        return None
    mask = np.zeros(shape, np.float32)
    cv2.polylines(mask, [np.round(px * 16).astype(np.int32)], False, 1.0, max(1, int(round(width))), cv2.LINE_AA, 4)
    return mask


def blur_regions(rgb: np.ndarray, ux: np.ndarray, uy: np.ndarray, blur: np.ndarray, um_per_px: float) -> np.ndarray:
    """Out-of-focus patches: the image blends into a blurred copy toward each patch's centre."""
    if len(blur) == 0:
        return rgb
    weight = np.zeros(ux.shape, np.float32)
    sigma = 0.0
    for cx, cy, r, s in blur:
        wk = np.clip((r - np.hypot(ux - cx, uy - cy)) / (0.4 * r), 0, 1)
        if wk.any():
            weight = np.maximum(weight, wk)
            sigma = max(sigma, s / um_per_px)
    if sigma == 0.0:
        return rgb
    soft = cv2.GaussianBlur(rgb, (0, 0), sigma)
    return rgb + (soft - rgb) * weight[..., None]


def jpeg(rgb: np.ndarray, quality: int | None) -> np.ndarray:
    """The scanner's JPEG round trip (8x8 blocks, 4:2:0 chroma)."""
    if quality is None:
        return rgb
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not JPEG-encode a synthetic tile")
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if decoded is None:
        raise RuntimeError("OpenCV could not decode the JPEG it just encoded")
    return np.ascontiguousarray(decoded[..., ::-1])
