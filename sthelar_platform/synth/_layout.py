"""Synthetic tissue architecture: region map, cell placement, nucleus and cell polygons.

Coordinates are in µm (Xenium's global frame). Polygons are star-shaped around the
centroid with a fixed number of vertices, so radii per vertex are kept and reused
to sample transcripts strictly inside the nucleus or the cytoplasm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from sthelar_platform.core.config.synthetic import SyntheticConfig, TissueSpec

REGIONS = ("background", "stroma", "epithelium", "vessel", "lumen", "aggregate", "special", "tumor", "band")
REGION_CODE = {name: i for i, name in enumerate(REGIONS)}
N_VERTICES = 16
GRID_UM = 4.0


@dataclass
class TissueLayout:
    extent_um: tuple[float, float]
    region: np.ndarray  # (gy, gx) uint8 region codes on a GRID_UM grid
    flow: np.ndarray  # (gy, gx) float32 fibre orientation (rad)
    vessel_angle: np.ndarray  # (gy, gx) float32 tangent of the nearest vessel wall (rad)
    band_depth: np.ndarray  # (gy, gx) float32 depth into the epidermis-like band (µm), -1 outside

    def lookup(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gy, gx = self.region.shape
        ix = np.clip((x / GRID_UM).astype(np.int64), 0, gx - 1)
        iy = np.clip((y / GRID_UM).astype(np.int64), 0, gy - 1)
        return iy, ix


@dataclass
class Cells:
    """One row per cell; arrays aligned."""

    x: np.ndarray
    y: np.ndarray
    category: np.ndarray  # str
    fine_label: np.ndarray  # str
    region: np.ndarray  # uint8
    has_nucleus: np.ndarray  # bool
    nuc_radii: np.ndarray  # (n, N_VERTICES) µm, 0 when no nucleus
    cell_radii: np.ndarray  # (n, N_VERTICES) µm
    darkness: np.ndarray  # hematoxylin density of the nucleus

    def __len__(self) -> int:
        return len(self.x)

    @staticmethod
    def angles() -> np.ndarray:
        return np.linspace(0, 2 * np.pi, N_VERTICES, endpoint=False)

    def polygons(self, which: str) -> np.ndarray:
        """(n, N_VERTICES, 2) vertices in µm for 'nucleus' or 'cell'."""
        radii = self.nuc_radii if which == "nucleus" else self.cell_radii
        t = self.angles()
        vx = self.x[:, None] + radii * np.cos(t)[None, :]
        vy = self.y[:, None] + radii * np.sin(t)[None, :]
        return np.stack([vx, vy], axis=-1)

    def subset(self, keep: np.ndarray) -> Cells:
        return Cells(**{k: v[keep] for k, v in self.__dict__.items()})


def _tissue_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    gy, gx = shape
    yy, xx = np.mgrid[0:gy, 0:gx].astype(np.float32)
    cy, cx = (gy - 1) / 2, (gx - 1) / 2
    theta = np.arctan2(yy - cy, xx - cx)
    rr = np.hypot((xx - cx) / (0.47 * gx), (yy - cy) / (0.47 * gy))
    wobble = np.ones_like(theta)
    for k in range(2, 7):
        wobble += rng.uniform(0.02, 0.06) / k * 2 * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return rr <= wobble


def build_layout(tissue_cfg: TissueSpec, extent_um: tuple[float, float], rng: np.random.Generator) -> TissueLayout:
    """Paint regions (stroma, glands, nests, vessels, aggregates, bands) inside a tissue outline."""
    w, h = extent_um
    gx, gy = int(np.ceil(w / GRID_UM)), int(np.ceil(h / GRID_UM))
    tissue = _tissue_mask((gy, gx), rng)
    region = np.where(tissue, REGION_CODE["stroma"], REGION_CODE["background"]).astype(np.uint8)
    vessel_angle = np.zeros((gy, gx), np.float32)
    band_depth = np.full((gy, gx), -1.0, np.float32)
    yy, xx = np.mgrid[0:gy, 0:gx]
    xs_um, ys_um = (xx + 0.5) * GRID_UM, (yy + 0.5) * GRID_UM
    tissue_area_mm2 = tissue.sum() * GRID_UM**2 / 1e6
    inside = np.argwhere(tissue)
    # Large zones first, vessels last so they sit on top.
    order = {"band": 0, "nest": 1, "gland": 2, "vessel": 3}
    for spec in sorted(tissue_cfg.structures, key=lambda s: order[s.kind]):
        kind = spec.kind
        if kind == "band":
            depth = ndimage.distance_transform_edt(tissue) * GRID_UM
            width = rng.uniform(*spec.given(spec.width_um))
            upper = ys_um < h * 0.5
            sel = tissue & upper & (depth <= width)
            region[sel] = REGION_CODE[spec.region or "band"]
            band_depth[sel] = depth[sel]  # distance from the surface; the basal layer is deepest
            continue
        n = max(1, int(rng.poisson(spec.per_mm2 * tissue_area_mm2)))
        for _ in range(n):
            iy, ix = inside[rng.integers(len(inside))]
            cx, cy = xs_um[iy, ix], ys_um[iy, ix]
            r = rng.uniform(*spec.given(spec.radius_um))
            pad = int(np.ceil(r / GRID_UM)) + 2
            y0, y1, x0, x1 = max(iy - pad, 0), min(iy + pad + 1, gy), max(ix - pad, 0), min(ix + pad + 1, gx)
            dx, dy = xs_um[y0:y1, x0:x1] - cx, ys_um[y0:y1, x0:x1] - cy
            aspect = rng.uniform(0.7, 1.0)
            rot = rng.uniform(0, np.pi)
            u = dx * np.cos(rot) + dy * np.sin(rot)
            v = (-dx * np.sin(rot) + dy * np.cos(rot)) / aspect
            d = np.hypot(u, v)
            win_tissue = tissue[y0:y1, x0:x1]
            win = region[y0:y1, x0:x1]
            if kind == "nest":
                win[(d <= r) & win_tissue] = REGION_CODE[spec.given(spec.region)]
            elif kind in ("gland", "vessel"):
                wall = spec.given(spec.wall_um)
                wall_code = REGION_CODE["epithelium" if kind == "gland" else "vessel"]
                win[(d <= r) & (d > r - wall) & win_tissue] = wall_code
                win[(d <= r - wall) & win_tissue] = REGION_CODE["lumen"]
                if kind == "vessel":
                    vessel_angle[y0:y1, x0:x1] = np.where(d <= r, np.arctan2(dy, dx) + np.pi / 2, vessel_angle[y0:y1, x0:x1])
    phase = rng.uniform(0, 2 * np.pi, 3)
    flow = (np.pi * (0.6 * np.sin(xs_um / 170 + phase[0]) + 0.4 * np.cos(ys_um / 230 + phase[1]))).astype(np.float32)
    return TissueLayout(extent_um=(w, h), region=region, flow=flow, vessel_angle=vessel_angle, band_depth=band_depth)


def _radial_profile(n: int, a: np.ndarray, b: np.ndarray, phi: np.ndarray, irregularity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Radii of an irregular ellipse at N_VERTICES angles, (n, N_VERTICES)."""
    t = Cells.angles()[None, :] - phi[:, None]
    r = a[:, None] * b[:, None] / np.sqrt((b[:, None] * np.cos(t)) ** 2 + (a[:, None] * np.sin(t)) ** 2)
    wobble = np.zeros_like(r)
    for k in (2, 3, 5):
        wobble += rng.normal(0, 1, (n, 1)) * np.cos(k * Cells.angles()[None, :] + rng.uniform(0, 2 * np.pi, (n, 1))) / k
    return r * (1 + irregularity[:, None] * wobble)


def place_cells(layout: TissueLayout, tissue_name: str, synth_cfg: SyntheticConfig, rng: np.random.Generator,
                density_scale: float = 1.0) -> Cells:
    """Sample cells by regional density and composition, with non-overlapping nuclei."""
    tissue_cfg = synth_cfg.tissues[tissue_name]
    density = synth_cfg.density
    shapes = synth_cfg.shapes
    w, h = layout.extent_um
    rho = np.zeros(len(REGIONS))
    for name, d in density.items():
        rho[REGION_CODE[name]] = d * density_scale / 1000.0
    rho_max = rho.max()
    n_cand = rng.poisson(w * h * rho_max * 1.25)
    x, y = rng.uniform(0, w, n_cand), rng.uniform(0, h, n_cand)
    iy, ix = layout.lookup(x, y)
    reg = layout.region[iy, ix]
    keep = rng.random(n_cand) < rho[reg] / rho_max
    x, y, reg, iy, ix = x[keep], y[keep], reg[keep], iy[keep], ix[keep]

    category = np.empty(len(x), dtype=object)
    composition = tissue_cfg.composition
    for code, name in enumerate(REGIONS):
        sel = np.flatnonzero(reg == code)
        if len(sel) == 0:
            continue
        if name in ("background", "lumen"):
            category[sel] = None
            continue
        comp = composition.get(name) or composition["stroma"]
        cats = list(comp)
        p = np.array([float(comp[c]) for c in cats])
        category[sel] = np.array(cats, dtype=object)[rng.choice(len(cats), len(sel), p=p / p.sum())]
    # Melanocytes live in the basal layer of an epidermis-like band only.
    depth = layout.band_depth[iy, ix]
    band_sel = depth >= 0
    if band_sel.any():
        basal_cut = np.quantile(depth[band_sel], 0.8)
        not_basal = band_sel & (depth < basal_cut) & (category == "Melanocyte")
        category[not_basal] = "Epithelial"
    valid = category != None  # noqa: E711
    x, y, reg, iy, ix, category = x[valid], y[valid], reg[valid], iy[valid], ix[valid], category[valid].astype(str)
    n = len(x)

    a = np.empty(n)
    b = np.empty(n)
    irr = np.empty(n)
    dark = np.empty(n)
    expansion = np.empty(n)
    phi = rng.uniform(0, np.pi, n)
    for cat, spec in shapes.items():
        sel = category == cat
        k = int(sel.sum())
        if k == 0:
            continue
        scale = rng.lognormal(0, 0.1, k)
        a[sel] = spec.axes[0] * scale
        b[sel] = spec.axes[1] * scale * rng.lognormal(0, 0.05, k)
        irr[sel] = spec.irregularity
        dark[sel] = spec.darkness * rng.lognormal(0, 0.08, k)
        expansion[sel] = spec.expansion
        if spec.oriented == "flow":
            phi[sel] = layout.flow[iy[sel], ix[sel]] + rng.normal(0, 0.15, k)
        elif spec.oriented == "vessel":
            phi[sel] = layout.vessel_angle[iy[sel], ix[sel]] + rng.normal(0, 0.1, k)
    nuc = _radial_profile(n, a, b, phi, irr, rng)
    rc = nuc.max(1)

    # Prune overlapping nuclei greedily (candidate order is random, so no spatial bias).
    tree = cKDTree(np.column_stack([x, y]))
    pairs = tree.query_pairs(2 * rc.max() + 0.5, output_type="ndarray")
    if len(pairs):
        d = np.hypot(x[pairs[:, 0]] - x[pairs[:, 1]], y[pairs[:, 0]] - y[pairs[:, 1]])
        conflict = pairs[d < rc[pairs[:, 0]] + rc[pairs[:, 1]] + 0.4]
        removed = np.zeros(n, bool)
        for i, j in conflict[np.argsort(conflict.max(1))]:
            if not removed[i] and not removed[j]:
                removed[max(i, j)] = True
        keep = ~removed
    else:
        keep = np.ones(n, bool)
    x, y, category, reg, nuc, rc, dark, expansion = x[keep], y[keep], category[keep], reg[keep], nuc[keep], rc[keep], dark[keep], expansion[keep]
    n = len(x)

    # Cell = nucleus expanded radially, capped so that neighbouring cells never overlap:
    # cap_i = min_j d_ij * rc_i / (rc_i + rc_j) gives cap_i + cap_j <= d_ij and cap_i >= rc_i.
    tree = cKDTree(np.column_stack([x, y]))
    k = min(9, n)
    dist, idx = tree.query(np.column_stack([x, y]), k=k)
    if k > 1:
        dist, idx = dist[:, 1:], idx[:, 1:]
        cap = np.min(dist * rc[:, None] / (rc[:, None] + rc[idx]), axis=1)
    else:
        cap = np.full(n, np.inf)
    cell = np.minimum(nuc + expansion[:, None] * rng.uniform(0.8, 1.2, (n, 1)), cap[:, None] * 0.98)
    cell = np.maximum(cell, nuc)

    has_nucleus = rng.random(n) >= synth_cfg.no_nucleus_fraction
    nuc = np.where(has_nucleus[:, None], nuc, 0.0)

    fine = np.empty(n, dtype=object)
    for cat in np.unique(category):
        labels = synth_cfg.fine_labels[cat].get(tissue_name, synth_cfg.fine_labels[cat]["default"])
        sel = np.flatnonzero(category == cat)
        fine[sel] = np.array(labels, dtype=object)[rng.integers(len(labels), size=len(sel))]
    # Spatial order (rows of ~100 µm), like Xenium's FOV-ordered ids.
    order = np.lexsort((x, (y // 100).astype(int)))
    cells = Cells(
        x=x, y=y, category=category, fine_label=fine.astype(str), region=reg,
        has_nucleus=has_nucleus, nuc_radii=nuc, cell_radii=cell, darkness=dark,
    )
    return cells.subset(order)
