"""Xenium nucleus polygons as label rasters in H&E pixels.

Polygons are prepared once per slide (transformed into the pixels of one pyramid level,
repaired, split into parts) and then drawn once per streamed region with OpenCV's scanline
fill: a region's label image holds, at each pixel, ``1 + local index`` of the nucleus that
covers it. Patches are cut from that image; nothing is clipped per cell per patch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import polars as pl

from sthelar_platform.core.displacement import DisplacementField
from sthelar_platform.core.errors import InputError

_SHIFT = 4  # OpenCV fixed-point bits: vertices keep 1/16 px precision


@dataclass
class NucleusPolygons:
    """All nucleus rings of a slide in level pixels (pixel centres at integer coordinates).

    ``cell`` indexes ``cell_ids``; one cell may own several rings (multi-part nuclei).
    """

    cell_ids: np.ndarray          # (n_cells,) str, Xenium ids
    ring_cell: np.ndarray         # (n_rings,) int, index into cell_ids
    ring_start: np.ndarray        # (n_rings + 1,) offsets into vertices
    vertices: np.ndarray          # (n_vertices, 2) float64, x/y level px
    bbox: np.ndarray              # (n_rings, 4) xmin, ymin, xmax, ymax
    n_empty: int = 0              # rings dropped: < 3 vertices or zero area
    n_repaired: int = 0           # invalid (e.g. self-intersecting) rings made valid
    n_multipart: int = 0          # cells given with more than one ring (multi-part nuclei)

    def rings_in(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """Indices of rings whose bounding box touches the window [x0, x1) x [y0, y1)."""
        b = self.bbox
        return np.flatnonzero((b[:, 2] >= x0 - 1) & (b[:, 0] < x1) & (b[:, 3] >= y0 - 1) & (b[:, 1] < y1))


def _ring_areas(xy: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Signed shoelace area of every ring at once."""
    nxt = np.arange(1, len(xy) + 1)
    nxt[starts[1:] - 1] = starts[:-1]  # each ring's last vertex wraps to its first
    cross = xy[:, 0] * xy[nxt, 1] - xy[nxt, 0] * xy[:, 1]
    return 0.5 * np.add.reduceat(cross, starts[:-1]) if len(starts) > 1 else np.zeros(0)


def _repair(xy: np.ndarray, starts: np.ndarray, invalid: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
    """Make invalid rings valid; returns the exterior rings of every polygon part and their source ring."""
    import shapely

    parts, owner = [], []
    for i in np.flatnonzero(invalid):
        fixed = shapely.make_valid(shapely.Polygon(xy[starts[i]:starts[i + 1]]))
        for geom in getattr(fixed, "geoms", [fixed]):
            if isinstance(geom, shapely.Polygon) and geom.area > 0:
                parts.append(np.asarray(geom.exterior.coords)[:-1])
                owner.append(int(i))
            elif isinstance(geom, shapely.MultiPolygon):
                for g in geom.geoms:
                    parts.append(np.asarray(g.exterior.coords)[:-1])
                    owner.append(int(i))
    return parts, owner


def load_nucleus_polygons(boundaries: str | Path, um_to_px: np.ndarray,
                          warp: DisplacementField | None = None) -> NucleusPolygons:
    """Read ``nucleus_boundaries.parquet`` (µm) and map it through the 3x3 ``um_to_px`` affine.

    ``warp`` is the registration's non-rigid correction (Xenium µm = affine + warp): vertices are
    moved through its inverse first. Rings are the runs of equal (cell_id, label_id); a closing
    vertex equal to the first is dropped.
    """
    import shapely

    path = Path(boundaries)
    try:
        df = pl.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise InputError(path, f"cannot read nucleus boundaries ({exc})", "materialize xenium_slide again") from exc
    missing = {"cell_id", "vertex_x", "vertex_y"} - set(df.columns)
    if missing:
        raise InputError(path, f"nucleus boundaries lack columns {sorted(missing)}", "materialize xenium_slide again")
    part_key = ["cell_id", "label_id"] if "label_id" in df.columns else ["cell_id"]
    df = df.filter(pl.col("vertex_x").is_finite() & pl.col("vertex_y").is_finite())
    key = df.select(part_key).to_pandas()
    change = np.ones(len(df), bool)
    if len(df):
        change[1:] = (key.iloc[1:].to_numpy() != key.iloc[:-1].to_numpy()).any(1)
    starts = np.flatnonzero(change)
    xy_um = df.select("vertex_x", "vertex_y").to_numpy().astype(np.float64)
    # drop a closing vertex that repeats the first one of its ring
    ends = np.r_[starts[1:], len(df)] - 1
    closing = ends[(ends > starts) & (xy_um[ends] == xy_um[starts]).all(1)]
    keep = np.ones(len(df), bool)
    keep[closing] = False
    ring_of_vertex = np.cumsum(change) - 1
    xy_um, ring_of_vertex = xy_um[keep], ring_of_vertex[keep]
    if warp is not None:
        xy_um = warp.inverse(xy_um)
    ring_cells_str = df["cell_id"].to_numpy()[starts]
    counts = np.bincount(ring_of_vertex, minlength=len(starts))
    starts = np.r_[0, np.cumsum(counts)]
    xy = xy_um @ um_to_px[:2, :2].T + um_to_px[:2, 2]

    area = _ring_areas(xy, starts) if len(xy) else np.zeros(0)
    # A bow-tie's signed area can cancel to 0: zero area alone does not make a ring empty;
    # invalid rings go to make_valid and count as empty only when nothing with area is left.
    good = counts >= 3
    n_empty = int((~good).sum())
    rings = [xy[starts[i]:starts[i + 1]] for i in range(len(counts))]
    valid = np.ones(len(counts), bool)
    if good.any():
        gi = np.flatnonzero(good)
        of_good = np.repeat(good, counts)
        ring_idx = np.searchsorted(gi, np.repeat(np.arange(len(counts)), counts)[of_good])
        valid[gi] = shapely.is_valid(shapely.polygons(shapely.linearrings(xy[of_good], indices=ring_idx)))
    valid &= np.abs(area) > 1e-9
    invalid = good & ~valid
    repaired, owner = _repair(xy, starts, invalid)
    n_repaired = len(set(owner))
    n_empty += int(invalid.sum()) - n_repaired
    use = np.flatnonzero(good & valid)
    final_rings = [rings[i] for i in use] + repaired
    final_owner = np.r_[use, np.asarray(owner, int)].astype(int)

    cell_ids, ring_cell = np.unique(ring_cells_str[final_owner], return_inverse=True) if len(final_owner) else (
        np.zeros(0, "U"), np.zeros(0, int))
    order = np.argsort(ring_cell, kind="stable")  # draw cells in id order: deterministic overlaps
    final_rings = [final_rings[i] for i in order]
    ring_cell = ring_cell[order]
    lengths = np.array([len(r) for r in final_rings], int)
    verts = np.concatenate(final_rings) if final_rings else np.zeros((0, 2))
    ring_start = np.r_[0, np.cumsum(lengths)]
    if len(final_rings):
        bbox = np.column_stack([np.minimum.reduceat(verts[:, 0], ring_start[:-1]),
                                np.minimum.reduceat(verts[:, 1], ring_start[:-1]),
                                np.maximum.reduceat(verts[:, 0], ring_start[:-1]),
                                np.maximum.reduceat(verts[:, 1], ring_start[:-1])])
    else:
        bbox = np.zeros((0, 4))
    _, rings_per_cell = np.unique(ring_cells_str[good], return_counts=True)  # as given, before any repair
    return NucleusPolygons(cell_ids=np.asarray(cell_ids).astype(str), ring_cell=ring_cell, ring_start=ring_start,
                           vertices=verts, bbox=bbox, n_empty=n_empty, n_repaired=n_repaired,
                           n_multipart=int((rings_per_cell > 1).sum()))


def rasterize_region(polys: NucleusPolygons, x0: int, y0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Label image of the window: value k > 0 is ``cells[k - 1]``; returns (labels int32, cells)."""
    rings = polys.rings_in(x0, y0, x0 + w, y0 + h)
    out = np.zeros((h, w), np.int32)
    if not len(rings):
        return out, np.zeros(0, int)
    cells, local = np.unique(polys.ring_cell[rings], return_inverse=True)
    scale = float(1 << _SHIFT)
    origin = np.array([x0, y0], float)
    for ring, value in zip(rings, local + 1, strict=True):
        pts = np.round((polys.vertices[polys.ring_start[ring]:polys.ring_start[ring + 1]] - origin) * scale)
        cv2.fillPoly(out, [pts.astype(np.int32)], color=int(value), lineType=cv2.LINE_8, shift=_SHIFT)
    return out, cells
