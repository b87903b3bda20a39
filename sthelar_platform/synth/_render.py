"""Tile renderers for the synthetic DAPI morphology image, the H&E image and label masks.

Polygons are bucketed once per image; each tile fills only the polygons that touch it,
so any image size renders with constant memory.
"""

from __future__ import annotations

import cv2
import numpy as np

from sthelar_platform.core.displacement import DisplacementField
from sthelar_platform.synth._he_artefacts import apply_bubble, apply_fold, blur_regions, jpeg, pen_mask
from sthelar_platform.synth._he_realism import HEAppearance, scale_about_centres
from sthelar_platform.synth._layout import GRID_UM, REGION_CODE, Cells, TissueLayout
from sthelar_platform.synth._texture import seamless_noise

SHIFT = 4  # cv2 fixed-point bits: 1/16 px vertex precision
# Ruifrok & Johnston stain optical-density vectors (RGB), normalized.
OD_HEMATOXYLIN = np.array([0.650, 0.704, 0.286], np.float32)
OD_EOSIN = np.array([0.072, 0.990, 0.105], np.float32)
BUCKET = 256
PAD = 16  # px a realistic tile is rendered beyond its edges, so blurs need no seams


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
        for p, v in zip(self._fixed_point(idx, x0, y0, scale), values, strict=True):
            cv2.fillPoly(canvas, [p], color=float(v), lineType=cv2.LINE_8, shift=SHIFT)

    def outline(self, canvas: np.ndarray, x0: float, y0: float, idx: np.ndarray, values: np.ndarray, thickness: int,
                scale: float = 1.0) -> None:
        """Draw the borders of polygons ``idx`` (like ``fill``)."""
        for p, v in zip(self._fixed_point(idx, x0, y0, scale), values, strict=True):
            cv2.polylines(canvas, [p], True, color=float(v), thickness=thickness, lineType=cv2.LINE_8, shift=SHIFT)

    def _fixed_point(self, idx: np.ndarray, x0: float, y0: float, scale: float) -> np.ndarray:
        """Vertices of polygons ``idx`` in the canvas's pixels, as cv2's fixed-point integers."""
        return np.round(((self.verts[idx] / scale) - np.array([x0, y0]) - 0.5) * (1 << SHIFT)).astype(np.int32)


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    n: np.ndarray = rng.standard_normal(shape, dtype=np.float32)
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

    ``he_to_um`` (3x3) maps level-0 H&E pixel coordinates to µm in Xenium's frame. Without an
    ``appearance`` the image is the simple world's flat textbook H&E (Ruifrok stains, smooth nuclei);
    with one, the realistic world's texture, stains and artefacts (``_he_realism``).
    """

    def __init__(self, cells: Cells, layout: TissueLayout, he_to_um: np.ndarray, eosin_by_region: dict[str, float], seed: int,
                 deformation: DisplacementField | None = None, appearance: HEAppearance | None = None):
        self.um_to_he = np.linalg.inv(he_to_um)
        self.he_to_um = he_to_um
        self.um_per_px = float(np.sqrt(abs(np.linalg.det(he_to_um[:2, :2]))))
        self.deformation = deformation  # the section's own: tissue at Xenium p sits at he_to_um^-1(p + d(p))
        self.look = appearance
        nuc_keep = np.flatnonzero(cells.has_nucleus)
        nuclei = cells.polygons("nucleus")[nuc_keep]
        if appearance is not None:
            detail = appearance.detail
            nuclei = scale_about_centres(nuclei, detail.nucleus_scale)
            self.nucleoli = PolygonIndex(self._to_he(detail.nucleoli))
            self.fibres = PolygonIndex(self._to_he(detail.fibres))
            self.red_cells = PolygonIndex(self._to_he(detail.red_cells))
            self.red_centres = PolygonIndex(self._to_he(detail.red_cell_centres))
            ground = appearance.spec.cells.stroma_ground
            eosin_by_region = {**eosin_by_region, "stroma": eosin_by_region["stroma"] * ground}
        self.nuc_index = PolygonIndex(self._to_he(nuclei))
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

    def _coords(self, s: int, y0: int, x0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each pixel's glass µm (the affine frame) and the Xenium µm of the tissue it shows."""
        jj, ii = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        hx, hy = (x0 + jj + 0.5) * s, (y0 + ii + 0.5) * s
        m = self.he_to_um
        gx, gy = m[0, 0] * hx + m[0, 1] * hy + m[0, 2], m[1, 0] * hx + m[1, 1] * hy + m[1, 2]
        if self.deformation is None:
            return gx, gy, gx, gy
        p = self.deformation.inverse(np.column_stack([gx.ravel(), gy.ravel()]))
        return gx, gy, p[:, 0].reshape(gx.shape), p[:, 1].reshape(gy.shape)

    def _eosin_at(self, tx: np.ndarray, ty: np.ndarray) -> np.ndarray:
        return cv2.remap(self.eosin_map, (tx / GRID_UM - 0.5).astype(np.float32), (ty / GRID_UM - 0.5).astype(np.float32),
                         cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)

    def __call__(self, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        if self.look is None:
            return self._flat(level, y0, x0, h, w)
        pad = max(PAD >> level, 2)
        rng = _tile_rng(self.seed, 2, level, y0, x0)
        rgb = self._realistic(self.look, rng, level, y0 - pad, x0 - pad, h + 2 * pad, w + 2 * pad)[pad:pad + h, pad:pad + w]
        return jpeg(np.ascontiguousarray(rgb), self.look.artefacts.jpeg_quality)

    def _flat(self, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        s = 2**level
        rng = _tile_rng(self.seed, 2, level, y0, x0)
        _, _, tx, ty = self._coords(s, y0, x0, h, w)
        eos = self._eosin_at(tx, ty)
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

    def _texture(self, kind: int, y0: int, x0: int, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
        return seamless_noise(self.seed, kind, y0, x0, shape, sigma_px)

    def _realistic(self, look: HEAppearance, rng: np.random.Generator, level: int, y0: int, x0: int, h: int,
                   w: int) -> np.ndarray:
        s = 2**level
        um_px = self.um_per_px * s
        gx, gy, tx, ty = self._coords(s, y0, x0, h, w)
        base = self._eosin_at(tx, ty)
        window = (x0 * s - 40, y0 * s - 40, (x0 + w) * s + 40, (y0 + h) * s + 40)
        eos = self._eosin_layer(look, base, window, s, um_px, y0, x0)
        hem = self._hematoxylin_layer(look, window, s, um_px, y0, x0, (h, w))
        hem += np.where(base > 0.02, 0.04, 0.0).astype(np.float32)
        stain, art = look.stain, look.artefacts
        od = (stain.h_scale * hem[..., None] * stain.hematoxylin
              + stain.e_scale * np.clip(eos, 0, None)[..., None] * stain.eosin)
        apply_fold(od, gx, gy, art.fold)
        apply_bubble(od, gx, gy, art.bubble)
        to_tile = np.array([[1 / s, 0, -x0 - 0.5], [0, 1 / s, -y0 - 0.5]]) @ self.um_to_he
        ink = pen_mask(art, to_tile, (h, w))
        if ink is not None:
            od += (ink * (0.85 + 0.15 * self._texture(4, y0, x0, (h, w), 4.0 / um_px)))[..., None] * art.pen_od
        od += 0.015 * rng.standard_normal((h, w, 1), dtype=np.float32)
        od = cv2.GaussianBlur(od, (0, 0), max(0.25 / um_px, 0.3))  # the scanner's optics
        rgb = 245.0 * np.power(10.0, -od, dtype=np.float32)
        rgb = blur_regions(rgb, gx, gy, art.blur, um_px)
        return np.clip(rgb, 0, 255).astype(np.uint8)

    def _eosin_layer(self, look: HEAppearance, base: np.ndarray, window: tuple, s: int, um_px: float,
                     y0: int, x0: int) -> np.ndarray:
        """Ground substance, granular cytoplasm, faint membranes, collagen fibres and red cells."""
        cel = look.spec.cells
        shape = base.shape
        cyto, membrane, fibres, red = (np.zeros(shape, np.float32) for _ in range(4))
        idx = self.cell_index.query(*window)
        self.cell_index.fill(cyto, x0, y0, idx, self.cyto[idx], scale=s)
        self.cell_index.outline(membrane, x0, y0, idx, np.full(len(idx), cel.membrane), 1, scale=s)
        cyto *= np.clip(1 + cel.granularity * self._texture(1, y0, x0, shape, 0.5 / um_px), 0, None)
        idx = self.fibres.query(*window)
        self.fibres.fill(fibres, x0, y0, idx, np.full(len(idx), cel.fibre_eosin), scale=s)
        idx = self.red_cells.query(*window)
        self.red_cells.fill(red, x0, y0, idx, np.full(len(idx), cel.red_cell_eosin), scale=s)
        idx = self.red_centres.query(*window)
        self.red_centres.fill(red, x0, y0, idx, np.full(len(idx), cel.red_cell_eosin * cel.red_cell_pallor), scale=s)
        fibres = cv2.GaussianBlur(fibres, (0, 0), 0.6 / um_px) * np.clip(base / 0.1, 0, 1)  # soft, and only on tissue
        return (base + cyto + membrane + fibres) * (1 + 0.12 * self._texture(2, y0, x0, shape, 2.0 / um_px)) + red

    def _hematoxylin_layer(self, look: HEAppearance, window: tuple, s: int, um_px: float, y0: int, x0: int,
                           shape: tuple[int, int]) -> np.ndarray:
        """Nuclei with clumped chromatin, a darker rim and a nucleolus; crowded ones overlap and add up."""
        nuc, detail = look.spec.nuclei, look.detail
        layers = (np.zeros(shape, np.float32), np.zeros(shape, np.float32))  # alternate nuclei: overlaps add
        rim, nucleoli = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        idx = self.nuc_index.query(*window)
        interior, dark = detail.interior[idx], self.darkness[idx]
        for parity in (0, 1):
            sel = idx % 2 == parity
            self.nuc_index.fill(layers[parity], x0, y0, idx[sel], (dark * interior)[sel], scale=s)
        self.nuc_index.outline(rim, x0, y0, idx, dark * nuc.rim * (1.2 - interior), max(1, round(0.45 / um_px)), scale=s)
        idx = self.nucleoli.query(*window)
        self.nucleoli.fill(nucleoli, x0, y0, idx, detail.nucleolus_darkness[idx], scale=s)
        chromatin = np.clip(1 + nuc.chromatin * self._texture(3, y0, x0, shape, nuc.clump_um / um_px), 0.15, None)
        body = layers[0] + layers[1]
        hem = body * chromatin + rim * (body > 0) + nucleoli
        return cv2.GaussianBlur(hem, (0, 0), max(0.7 / s, 0.3))


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
