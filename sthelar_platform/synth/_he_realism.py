"""What real H&E looks like, drawn once per slide for the realistic world.

Per-slide stains; nuclear chromatin, rims and nucleoli; crowded nuclei; stromal collagen fibres and
red cells in vessels; and the slide's artefacts (``_he_artefacts``). Tissue structures are drawn in
Xenium µm, so they move with the section's deformation. ``_render.HERenderer`` paints them tile by
tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sthelar_platform.core.config import HEStain, WorldHE
from sthelar_platform.synth._he_artefacts import SlideArtefacts, sample_artefacts
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
