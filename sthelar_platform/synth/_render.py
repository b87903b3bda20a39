"""Tile renderers for the synthetic DAPI morphology image, the H&E image and label masks.

Polygons are bucketed once per image; each tile fills only the polygons that touch it,
so any image size renders with constant memory.
"""

from __future__ import annotations

import cv2
import numpy as np

from sthelar_platform.core.displacement import DisplacementField
from sthelar_platform.synth._layout import GRID_UM, REGION_CODE, Cells, TissueLayout

SHIFT = 4  # cv2 fixed-point bits: 1/16 px vertex precision
# Ruifrok & Johnston stain optical-density vectors (RGB), normalized.
OD_HEMATOXYLIN = np.array([0.650, 0.704, 0.286], np.float32)
OD_EOSIN = np.array([0.072, 0.990, 0.105], np.float32)
BUCKET = 256


class PolygonIndex:
    """Polygons in a pixel frame, bucketed on a coarse grid for window queries."""

    def __init__(self, verts_px: np.ndarray):
        self.verts = verts_px.astype(np.float64)
        lo = np.floor(self.verts.min(1) / BUCKET).astype(np.int64)
        hi = np.floor(self.verts.max(1) / BUCKET).astype(np.int64)
        owners, bx, by = [], [], []
        for dx in range(int((hi - lo)[:, 0].max(initial=0)) + 1):
            for dy in range(int((hi - lo)[:, 1].max(initial=0)) + 1):
                ok = (lo[:, 0] + dx <= hi[:, 0]) & (lo[:, 1] + dy <= hi[:, 1])
                idx = np.flatnonzero(ok)
                owners.append(idx)
                bx.append(lo[idx, 0] + dx)
                by.append(lo[idx, 1] + dy)
        owners_a = np.concatenate(owners) if owners else np.zeros(0, np.int64)
        keys = (np.concatenate(by) << 32) + np.concatenate(bx) if owners else np.zeros(0, np.int64)
        order = np.argsort(keys, kind="stable")
        self._keys, self._owners = keys[order], owners_a[order]

    def query(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        out = []
        for by in range(int(np.floor(y0 / BUCKET)), int(np.floor(y1 / BUCKET)) + 1):
            for bx in range(int(np.floor(x0 / BUCKET)), int(np.floor(x1 / BUCKET)) + 1):
                key = (by << 32) + bx
                lo, hi = np.searchsorted(self._keys, [key, key + 1])
                out.append(self._owners[lo:hi])
        return np.unique(np.concatenate(out)) if out else np.zeros(0, np.int64)

    def fill(self, canvas: np.ndarray, x0: float, y0: float, idx: np.ndarray, values: np.ndarray, scale: float = 1.0) -> None:
        """Fill polygons ``idx`` into ``canvas`` whose pixel (0, 0) sits at (x0, y0) / scale."""
        if len(idx) == 0:
            return
        pts = np.round(((self.verts[idx] / scale) - np.array([x0, y0]) - 0.5) * (1 << SHIFT)).astype(np.int32)
        for p, v in zip(pts, values, strict=True):
            cv2.fillPoly(canvas, [p], color=float(v), lineType=cv2.LINE_8, shift=SHIFT)


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    n = rng.standard_normal(shape, dtype=np.float32)
    if sigma > 0:
        n = cv2.GaussianBlur(n, (0, 0), sigma)
        n /= max(float(n.std()), 1e-6)
    return n


def _tile_rng(seed: int, kind: int, level: int, y: int, x: int) -> np.random.Generator:
    return np.random.default_rng([seed, kind, level, y, x])


class DapiRenderer:
    """DAPI-like nuclear stain in morphology pixels (uint16)."""

    def __init__(self, cells: Cells, pixel_size_um: float, seed: int):
        keep = np.flatnonzero(cells.has_nucleus)
        self.index = PolygonIndex(cells.polygons("nucleus")[keep] / pixel_size_um)
        self.brightness = 2500 + 5000 * cells.darkness[keep]
        self.seed = seed

    def __call__(self, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        s = 2**level
        rng = _tile_rng(self.seed, 1, level, y0, x0)
        canvas = np.zeros((h, w), np.float32)
        idx = self.index.query(x0 * s - 8, y0 * s - 8, (x0 + w) * s + 8, (y0 + h) * s + 8)
        self.index.fill(canvas, x0, y0, idx, self.brightness[idx], scale=s)
        texture = 1 + 0.25 * _noise(rng, (h, w), 1.2 / s)
        img = cv2.GaussianBlur(canvas * texture, (0, 0), max(0.9 / s, 0.3))
        img += 180 + 40 * rng.standard_normal((h, w), dtype=np.float32)
        return np.clip(img, 0, 65535).astype(np.uint16)


class HERenderer:
    """H&E rendered through Beer-Lambert from hematoxylin/eosin densities, in H&E pixels.

    ``he_to_um`` (3x3) maps level-0 H&E pixel coordinates to µm in Xenium's frame.
    """

    def __init__(self, cells: Cells, layout: TissueLayout, he_to_um: np.ndarray, eosin_by_region: dict[str, float], seed: int,
                 deformation: DisplacementField | None = None):
        self.um_to_he = np.linalg.inv(he_to_um)
        self.he_to_um = he_to_um
        self.deformation = deformation  # the section's own: tissue at Xenium p sits at he_to_um^-1(p + d(p))
        nuc_keep = np.flatnonzero(cells.has_nucleus)
        self.nuc_index = PolygonIndex(self._to_he(cells.polygons("nucleus")[nuc_keep]))
        self.darkness = cells.darkness[nuc_keep] * 0.95
        self.cell_index = PolygonIndex(self._to_he(cells.polygons("cell")))
        cyto = {"Epithelial": 0.16, "Myeloid": 0.12, "Melanocyte": 0.14, "Specialized": 0.05, "Glioblastoma": 0.12}
        self.cyto = np.array([cyto.get(c, 0.06) for c in cells.category], np.float32)
        eosin = np.zeros(len(REGION_CODE), np.float32)
        for name, value in eosin_by_region.items():
            eosin[REGION_CODE[name]] = value
        emap = eosin[layout.region]
        self.eosin_map = cv2.GaussianBlur(emap, (0, 0), 1.0)
        self.seed = seed

    def _to_he(self, verts_um: np.ndarray) -> np.ndarray:
        flat = verts_um.reshape(-1, 2)
        if self.deformation is not None:
            flat = self.deformation.forward(flat)
        he = flat @ self.um_to_he[:2, :2].T + self.um_to_he[:2, 2]
        return he.reshape(verts_um.shape)

    def __call__(self, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        s = 2**level
        rng = _tile_rng(self.seed, 2, level, y0, x0)
        jj, ii = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        hx, hy = (x0 + jj + 0.5) * s, (y0 + ii + 0.5) * s
        m = self.he_to_um
        ux, uy = m[0, 0] * hx + m[0, 1] * hy + m[0, 2], m[1, 0] * hx + m[1, 1] * hy + m[1, 2]
        if self.deformation is not None:  # the Xenium position each H&E pixel shows
            p = self.deformation.inverse(np.column_stack([ux.ravel(), uy.ravel()]))
            ux, uy = p[:, 0].reshape(ux.shape), p[:, 1].reshape(uy.shape)
        ux, uy = ux / GRID_UM - 0.5, uy / GRID_UM - 0.5
        eos = cv2.remap(self.eosin_map, ux.astype(np.float32), uy.astype(np.float32), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        tissue = eos > 0.02
        window = (x0 * s - 40, y0 * s - 40, (x0 + w) * s + 40, (y0 + h) * s + 40)
        cyto = np.zeros((h, w), np.float32)
        idx = self.cell_index.query(*window)
        self.cell_index.fill(cyto, x0, y0, idx, self.cyto[idx], scale=s)
        eos = (eos + cyto) * (1 + 0.18 * _noise(rng, (h, w), 2.0 / s))
        hem = np.zeros((h, w), np.float32)
        idx = self.nuc_index.query(*window)
        self.nuc_index.fill(hem, x0, y0, idx, self.darkness[idx], scale=s)
        hem *= 1 + 0.3 * _noise(rng, (h, w), 0.9 / s)
        hem = cv2.GaussianBlur(hem, (0, 0), max(0.7 / s, 0.3))
        hem += np.where(tissue, 0.04, 0.0).astype(np.float32)
        od = hem[..., None] * OD_HEMATOXYLIN + np.clip(eos, 0, None)[..., None] * OD_EOSIN
        od += 0.015 * rng.standard_normal((h, w, 1), dtype=np.float32)
        rgb = 245.0 * np.power(10.0, -od, dtype=np.float32)
        return np.clip(rgb, 0, 255).astype(np.uint8)


class LabelRenderer:
    """Label rasters (uint32) in morphology pixels: value = polygon index + 1."""

    def __init__(self, verts_um: np.ndarray, pixel_size_um: float):
        self.index = PolygonIndex(verts_um / pixel_size_um)
        self.values = np.arange(1, len(verts_um) + 1, dtype=np.int64)

    def __call__(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        canvas = np.zeros((h, w), np.int32)
        idx = self.index.query(x0 - 2, y0 - 2, x0 + w + 2, y0 + h + 2)
        self.index.fill(canvas, x0, y0, idx, self.values[idx])
        return canvas.astype(np.uint32)
