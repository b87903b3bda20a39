"""What real H&E looks like, drawn once per slide for the realistic world.

Per-slide stains, nuclear chromatin, rims and nucleoli, crowded nuclei, cytoplasm and membranes,
stromal collagen fibres, red cells in vessels, and the artefacts of real slides: out-of-focus
patches, scanner JPEG, a tissue fold, an air bubble and a pen mark. Tissue structures are drawn in
Xenium µm (they move with the section's deformation); artefacts live on the glass, in the affine
frame. ``_render.HERenderer`` paints them tile by tile; the functions here that take pixel arrays
work on any tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from sthelar_platform.core.config import HEArtefacts, HEStain, WorldHE
from sthelar_platform.synth._layout import GRID_UM, REGION_CODE, Cells, TissueLayout

_CIRCLE = np.linspace(0, 2 * np.pi, 12, endpoint=False)


@dataclass(frozen=True)
class SlideStain:
    """One slide's stain directions (unit optical-density vectors, RGB) and density scales."""

    hematoxylin: np.ndarray
    eosin: np.ndarray
    h_scale: float
    e_scale: float

    def to_dict(self) -> dict:
        return {"hematoxylin": np.round(self.hematoxylin, 4).tolist(), "eosin": np.round(self.eosin, 4).tolist(),
                "h_scale": round(self.h_scale, 4), "e_scale": round(self.e_scale, 4)}


def sample_stain(spec: HEStain, rng: np.random.Generator) -> SlideStain:
    def direction(mean: tuple) -> np.ndarray:
        v = np.clip(np.asarray(mean, float) + rng.normal(0, spec.vector_sd, 3), 0.02, None)
        return (v / np.linalg.norm(v)).astype(np.float32)

    return SlideStain(direction(spec.hematoxylin), direction(spec.eosin),
                      float(rng.lognormal(0, spec.intensity_sd)), float(rng.lognormal(0, spec.intensity_sd)))


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


@dataclass(frozen=True)
class TissueDetail:
    """Polygons (Xenium µm) and per-nucleus values the realistic H&E adds to the cells."""

    nucleus_scale: np.ndarray      # per nucleus: its size in the H&E against its segmentation (crowding)
    interior: np.ndarray           # per nucleus: interior density (x darkness); pale, open nuclei < 1
    nucleoli: np.ndarray           # (k, 12, 2)
    nucleolus_darkness: np.ndarray
    fibres: np.ndarray             # (k, 6, 2) thin spindles
    red_cells: np.ndarray          # (k, 12, 2)
    red_cell_centres: np.ndarray   # (k, 12, 2) the pale centres


def build_detail(cells: Cells, layout: TissueLayout, spec: WorldHE, rng: np.random.Generator) -> TissueDetail:
    nuc = np.flatnonzero(cells.has_nucleus)
    regions = {code: name for name, code in REGION_CODE.items()}
    scale = np.array([spec.nuclei.crowding.get(regions[int(r)], 1.0) for r in cells.region[nuc]], np.float32)
    interior = np.array([spec.nuclei.vesicular.get(c, 1.0) for c in cells.category[nuc]], np.float32)

    mean_r = cells.nuc_radii[nuc].mean(1)
    big = np.flatnonzero(mean_r >= spec.nuclei.nucleolus_min_radius_um)
    radius = rng.uniform(*spec.nuclei.nucleolus_radius_um, len(big))
    offset = rng.uniform(0, 0.3, len(big)) * mean_r[big]
    turn = rng.uniform(0, 2 * np.pi, len(big))
    cx = cells.x[nuc][big] + offset * np.cos(turn)
    cy = cells.y[nuc][big] + offset * np.sin(turn)
    nucleoli = _ellipses(cx, cy, radius, radius * rng.uniform(0.75, 1.0, len(big)), turn)
    darkness = cells.darkness[nuc][big] * spec.nuclei.nucleolus_darkness

    stroma = _points_in(layout, layout.region == REGION_CODE["stroma"], spec.cells.fibres_per_1000um2 / 1000, rng)
    iy, ix = layout.lookup(stroma[:, 0], stroma[:, 1])
    along = layout.flow[iy, ix] + rng.normal(0, 0.25, len(stroma))
    half_len = rng.uniform(*spec.cells.fibre_length_um, len(stroma)) / 2
    half_wid = rng.uniform(*spec.cells.fibre_width_um, len(stroma)) / 2
    d = np.column_stack([np.cos(along), np.sin(along)])
    n = np.column_stack([-d[:, 1], d[:, 0]])
    a, b = d * half_len[:, None], n * half_wid[:, None]
    fibres = np.stack([stroma - a, stroma - a / 3 - b, stroma + a / 3 - b,    # spindles, tapering to points
                       stroma + a, stroma + a / 3 + b, stroma - a / 3 + b], axis=1)

    lumen = (layout.region == REGION_CODE["lumen"]) & (layout.vessel_angle != 0)  # vessels' lumens, not glands'
    rbc = _points_in(layout, lumen, spec.cells.red_cells_per_100um2 / 100, rng)
    r = rng.uniform(*spec.cells.red_cell_radius_um, len(rbc))
    squash = rng.uniform(0.8, 1.0, len(rbc))
    turn = rng.uniform(0, np.pi, len(rbc))
    red = _ellipses(rbc[:, 0], rbc[:, 1], r, r * squash, turn)
    pale = _ellipses(rbc[:, 0], rbc[:, 1], 0.45 * r, 0.45 * r * squash, turn)
    return TissueDetail(scale, interior, nucleoli, darkness.astype(np.float32), fibres, red, pale)


def _ellipses(cx: np.ndarray, cy: np.ndarray, a: np.ndarray, b: np.ndarray, turn: np.ndarray) -> np.ndarray:
    c, s = np.cos(turn)[:, None], np.sin(turn)[:, None]
    u, v = a[:, None] * np.cos(_CIRCLE)[None], b[:, None] * np.sin(_CIRCLE)[None]
    return np.stack([cx[:, None] + u * c - v * s, cy[:, None] + u * s + v * c], axis=-1)


def _points_in(layout: TissueLayout, mask: np.ndarray, per_um2: float, rng: np.random.Generator) -> np.ndarray:
    """Uniform points in the grid cells of ``mask`` at ``per_um2``."""
    cells = np.argwhere(mask)
    k = int(rng.poisson(len(cells) * GRID_UM**2 * per_um2))
    if k == 0 or len(cells) == 0:
        return np.zeros((0, 2))
    pick = cells[rng.integers(len(cells), size=k)]
    return np.column_stack([(pick[:, 1] + rng.random(k)) * GRID_UM, (pick[:, 0] + rng.random(k)) * GRID_UM])


def scale_about_centres(polygons: np.ndarray, scale: np.ndarray) -> np.ndarray:
    centre = polygons.mean(1, keepdims=True)
    return centre + (polygons - centre) * scale[:, None, None]


# --- texture that is the same function of the global pixel position in every tile ------------------

_MIX = (np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))


def _hash_uniform(seed: int, kind: int, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """A uniform (0, 1) value per lattice point (murmur3's 64-bit finaliser over the point's coordinates)."""
    with np.errstate(over="ignore"):
        h = (iy.astype(np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             ^ ix.astype(np.int64).astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
             ^ np.uint64((seed * 1_000_003 + kind) & 0xFFFFFFFFFFFF) * np.uint64(0x165667B19E3779F9))
        for m in _MIX:
            h ^= h >> np.uint64(33)
            h *= m
        h ^= h >> np.uint64(33)
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def seamless_noise(seed: int, kind: int, y0: int, x0: int, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Smooth, zero-mean noise of about unit variance and correlation length ``sigma_px``, for pixels
    ``y0..y0+h``, ``x0..x0+w`` of a global grid: adjacent tiles join without a seam.

    Normal values on a lattice of spacing ~1.5 sigma, keyed by their global lattice position, are
    interpolated bicubically; per-tile random fields normalised per tile showed every tile's edge.
    """
    h, w = shape
    step = max(1.5 * sigma_px, 1.0)
    iy = np.arange(int(np.floor(y0 / step)) - 2, int(np.floor((y0 + h) / step)) + 3)
    ix = np.arange(int(np.floor(x0 / step)) - 2, int(np.floor((x0 + w) / step)) + 3)
    u1 = _hash_uniform(seed, 2 * kind, iy[:, None], ix[None, :])
    u2 = _hash_uniform(seed, 2 * kind + 1, iy[:, None], ix[None, :])
    lattice = (np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)).astype(np.float32)  # Box-Muller
    gy = ((y0 + np.arange(h) + 0.5) / step - iy[0]).astype(np.float32)
    gx = ((x0 + np.arange(w) + 0.5) / step - ix[0]).astype(np.float32)
    map_x, map_y = np.meshgrid(gx, gy)
    return cv2.remap(lattice, map_x, map_y, cv2.INTER_CUBIC) / _CUBIC_RMS


_CUBIC_RMS = 0.86  # rms of bicubically interpolated unit normals (measured 0.84-0.86 for sigma of 1.6-15 px)


# --- artefacts on a tile: ``ux``, ``uy`` are each pixel's glass µm, ``od`` (h, w, 3) -------------------

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
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


@dataclass(frozen=True)
class HEAppearance:
    """Everything the realistic H&E of one slide draws on."""

    spec: WorldHE
    stain: SlideStain
    artefacts: SlideArtefacts
    detail: TissueDetail

    def to_dict(self) -> dict:
        return {"stain": self.stain.to_dict(), "artefacts": self.artefacts.to_dict(),
                "red_cells": len(self.detail.red_cells), "fibres": len(self.detail.fibres),
                "nucleoli": len(self.detail.nucleoli)}


def draw_appearance(spec: WorldHE | None, cells: Cells, layout: TissueLayout,
                    rng: np.random.Generator) -> HEAppearance | None:
    """One slide's H&E appearance (None: the simple world's flat H&E)."""
    if spec is None:
        return None
    stain = sample_stain(spec.stain, rng)
    artefacts = sample_artefacts(spec.artefacts, layout.extent_um, rng)
    return HEAppearance(spec, stain, artefacts, build_detail(cells, layout, spec, rng))
