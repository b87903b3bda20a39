"""Whole-slide CellViT predictions, linked back to the Xenium cells and compared with their labels.

Every tissue tile of the model's magnification (the same grid as the patches, but keeping
tiles with no Xenium nucleus too) is predicted in batches, region by region, so memory does
not grow with the slide. Tiles overlap; a nucleus seen by several tiles is kept once, by the
tile whose centre is nearest its centroid (Chebyshev distance), where it is furthest from a
tile edge. Each predicted nucleus is linked to the Xenium nucleus it overlaps most (IoU at
least ``link_min_iou``), whose transcript-derived label it is compared with.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from sthelar_platform.core.categories import CategorySystem
from sthelar_platform.core.config import TilingConfig, TrainingConfig
from sthelar_platform.core.displacement import DisplacementField
from sthelar_platform.core.errors import InputError, require_readable_parquet, require_stage_output
from sthelar_platform.core.imaging import open_pyramid, read_level_region
from sthelar_platform.core.warehouse import PredictionsFolder
from sthelar_platform.model.cellvit.inference import LoadedModel
from sthelar_platform.tiling.masks import load_nucleus_polygons, rasterize_region
from sthelar_platform.tiling.patches import (
    cell_class_tables,
    choose_level,
    iter_regions,
    patch_grid,
    tissue_fractions,
    tissue_mask,
    um_to_level_px,
)


def owned_by_tile(gx: np.ndarray, gy: np.ndarray, x0: int, y0: int, tiles: set[tuple[int, int]], stride: int,
                  size: int) -> np.ndarray:
    """Which points (level px) tile (x0, y0) owns among the existing tiles that contain them.

    Owner = the tile whose centre is nearest in Chebyshev distance; ties go to the tile
    first in (y0, x0) order, so exactly one tile owns each point.
    """
    c = (size - 1) / 2
    own = np.maximum(np.abs(gx - (x0 + c)), np.abs(gy - (y0 + c)))
    keep = np.ones(len(gx), bool)
    for dx in (-stride, 0, stride):
        for dy in (-stride, 0, stride):
            nx, ny = x0 + dx, y0 + dy
            if (dx, dy) == (0, 0) or (nx, ny) not in tiles:
                continue
            inside = (gx >= nx - 0.5) & (gx < nx + size - 0.5) & (gy >= ny - 0.5) & (gy < ny + size - 0.5)
            d = np.maximum(np.abs(gx - (nx + c)), np.abs(gy - (ny + c)))
            closer = (d < own) | ((d == own) & ((ny, nx) < (y0, x0)))
            keep &= ~(inside & closer)
    return keep


def _overlaps(inst: np.ndarray, xen: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per predicted instance 1..n: the Xenium region value it overlaps most (0 = none), overlap px, that
    nucleus's pixels in the tile.
    """
    fg = inst > 0
    k = int(xen.max()) + 1
    pairs = inst[fg].astype(np.int64) * k + xen[fg]
    vals, counts = np.unique(pairs, return_counts=True)
    p, x = vals // k, vals % k
    best_x, best_ov = np.zeros(n + 1, np.int64), np.zeros(n + 1, np.int64)
    hit = x > 0
    order = np.lexsort((counts[hit], p[hit]))  # by instance, then overlap ascending: last write wins
    best_x[p[hit][order]] = x[hit][order]
    best_ov[p[hit][order]] = counts[hit][order]
    xen_area = np.bincount(xen.ravel(), minlength=k)
    return best_x[1:], best_ov[1:], xen_area[best_x[1:]] * (best_x[1:] > 0)


def agreement_by_category(cells: pd.DataFrame, classes: tuple[str, ...]) -> pd.DataFrame:
    """Per class: predicted vs transcript-derived label among the linked nuclei."""
    linked = cells[cells["xenium_cell_id"].notna()]
    rows = []
    for name in classes:
        truth, pred = linked["xenium_class"] == name, linked["predicted_class"] == name
        tp = int((truth & pred).sum())
        prec = tp / pred.sum() if pred.sum() else float("nan")
        rec = tp / truth.sum() if truth.sum() else float("nan")
        f1 = 2 * prec * rec / (prec + rec) if pred.sum() and truth.sum() and (prec + rec) > 0 else (
            0.0 if pred.sum() or truth.sum() else float("nan"))
        rows.append({"class_name": name, "n_xenium": int(truth.sum()), "n_predicted": int(pred.sum()), "tp": tp,
                     "precision": prec, "recall": rec, "f1": f1})
    return pd.DataFrame(rows)


def predict_slide(slide_id: str, he_path: Path, boundaries: Path, labels_path: Path, he_px_to_um: np.ndarray,
                  level0_um: float, model: LoadedModel, model_id: str, out: Path, tiling_cfg: TilingConfig, cfg: TrainingConfig,
                  categories: CategorySystem, magnifications: Mapping[str, tuple[float, float]],
                  progress: Callable[[int, int], None] | None = None,
                  warp: DisplacementField | None = None) -> tuple[dict, pd.DataFrame]:
    """Write ``predicted_cells.parquet``, ``agreement.csv``, ``confusion.csv`` and ``summary.json``.

    ``magnifications``: each magnification's µm/px range (pipeline.yaml ``he_image``); ``warp``: the
    registration's non-rigid correction (Xenium µm = affine + warp).

    Returns the summary and the per-class agreement table.
    """
    icfg = cfg.inference
    grouping = model.meta.get("grouping")
    mag = model.meta.get("magnification")
    if not grouping or not mag:
        raise InputError(model.source, "the model checkpoint does not name its grouping / magnification",
                         "use a best.pt written by a cellvit_* asset")
    classes = model.classes
    grouping_classes = categories.groupings[grouping].classes
    if tuple(grouping_classes) != classes:
        raise InputError(model.source, f"model classes {list(classes)} differ from grouping {grouping!r} in "
                         "categories.yaml", "retrain the model after changing categories.yaml")
    size, overlap = int(tiling_cfg.patches.size_px), int(tiling_cfg.patches.overlap_px)
    stride = size - overlap
    info = open_pyramid(he_path)
    lv = choose_level(info, level0_um, mag, magnifications)
    h, w = info.level_shapes[lv.level][:2]
    grid = patch_grid(h, w, size, overlap)
    mask, mask_down = tissue_mask(he_path, info, tiling_cfg.patches.tissue)
    grid["tissue_fraction"] = tissue_fractions(grid, mask, mask_down, lv.downsample, size)
    tiles = grid[grid["tissue_fraction"] >= float(icfg.min_tissue_fraction)]
    existing = set(zip(tiles["x0"].tolist(), tiles["y0"].tolist(), strict=True))
    labels = pd.read_parquet(require_readable_parquet(labels_path, "cell_types"), columns=["cell_id", "category"])
    polys = load_nucleus_polygons(require_stage_output(boundaries, "xenium_slide"), um_to_level_px(he_px_to_um, lv.downsample),
                                  warp)
    xen_class = cell_class_tables(polys.cell_ids, labels, categories)[grouping]
    bs, min_iou = int(icfg.batch_size), float(icfg.link_min_iou)
    parts: list[dict[str, np.ndarray]] = []
    seen_xenium = np.zeros(len(polys.cell_ids), bool)
    regions = list(iter_regions(tiles, size, int(icfg.region_tiles)))
    t0 = time.perf_counter()
    for i, (block, bx0, by0, bh, bw) in enumerate(regions):
        rgb = read_level_region(he_path, lv.level, by0, bx0, bh, bw)[..., :3]
        xen_region, cells = rasterize_region(polys, bx0, by0, bh, bw)
        offsets = list(zip((block["x0"] - bx0).tolist(), (block["y0"] - by0).tolist(), strict=True))
        for b in range(0, len(offsets), bs):
            chunk = offsets[b:b + bs]
            preds = model.predict(np.stack([rgb[oy:oy + size, ox:ox + size] for ox, oy in chunk]))
            for (ox, oy), p in zip(chunk, preds, strict=True):
                x0, y0 = ox + bx0, oy + by0
                xen = xen_region[oy:oy + size, ox:ox + size]
                _mark_seen_xenium(xen, cells, x0, y0, existing, stride, size, seen_xenium)
                if not len(p.types):
                    continue
                gx, gy = p.centroids[:, 0] + x0, p.centroids[:, 1] + y0
                keep = owned_by_tile(gx, gy, x0, y0, existing, stride, size)
                best, ov, xen_area = _overlaps(p.inst, xen, len(p.types))
                iou = ov / np.maximum(p.areas + xen_area - ov, 1)
                linked = (best > 0) & (iou >= min_iou)
                cell_index = np.where(linked, cells[np.maximum(best - 1, 0)] if len(cells) else 0, -1)
                parts.append({"tile_x0": np.full(keep.sum(), x0), "tile_y0": np.full(keep.sum(), y0),
                              "x_px": gx[keep], "y_px": gy[keep], "area_px": p.areas[keep],
                              "type_index": p.types[keep], "type_confidence": p.type_confidence[keep],
                              "cell_index": cell_index[keep], "link_iou": np.where(linked, iou, np.nan)[keep]})
        if progress:
            progress(i + 1, len(regions))
    wall = time.perf_counter() - t0
    cols = ["tile_x0", "tile_y0", "x_px", "y_px", "area_px", "type_index", "type_confidence", "cell_index", "link_iou"]
    table = pd.DataFrame({c: np.concatenate([q[c] for q in parts]) if parts else np.zeros(0) for c in cols})
    cell_index = table["cell_index"].to_numpy().astype(np.int64)
    lv0 = np.stack([(table["x_px"].to_numpy() + 0.5) * lv.downsample, (table["y_px"].to_numpy() + 0.5) * lv.downsample,
                    np.ones(len(table))], 1)
    um = (lv0 @ np.asarray(he_px_to_um).T)[:, :2]
    if warp is not None:
        um = warp.forward(um)
    names = np.array(("background",) + classes, dtype=object)
    out_cells = pd.DataFrame({
        "slide_id": slide_id, "nucleus_id": np.arange(len(table), dtype=np.int64),
        "x_um": um[:, 0], "y_um": um[:, 1], "x_px": table["x_px"], "y_px": table["y_px"],
        "area_px": table["area_px"].astype(np.int64),
        "predicted_class": names[table["type_index"].to_numpy().astype(int)],
        "type_confidence": table["type_confidence"],
        "xenium_cell_id": pd.array(np.where(cell_index >= 0, polys.cell_ids[np.maximum(cell_index, 0)], None),
                                   dtype="string"),
        "xenium_class": pd.array(np.where(cell_index >= 0, names[xen_class[np.maximum(cell_index, 0)]], None),
                                 dtype="string"),
        "link_iou": table["link_iou"],
    })
    folder = PredictionsFolder(out)
    out_cells.to_parquet(folder.cells, index=False)
    agreement = agreement_by_category(out_cells, classes)
    agreement.to_csv(folder.agreement, index=False)
    linked = out_cells[out_cells["xenium_cell_id"].notna()]
    confusion = pd.crosstab(linked["xenium_class"], linked["predicted_class"]).reindex(
        index=list(classes), columns=list(classes), fill_value=0)
    confusion.to_csv(folder.confusion)
    linked_cells = np.unique(cell_index[cell_index >= 0])
    summary = {
        "slide_id": slide_id, "model_id": model_id, "grouping": grouping, "magnification": mag,
        "n_tiles": len(tiles), "n_predicted": len(out_cells), "n_linked": len(linked),
        "n_xenium_nuclei_in_tiles": int(seen_xenium.sum()),
        "detection_recall": float(np.isin(np.flatnonzero(seen_xenium), linked_cells).mean()) if seen_xenium.any() else float("nan"),
        "detection_precision": len(linked) / len(out_cells) if len(out_cells) else float("nan"),
        "label_accuracy": float((linked["xenium_class"] == linked["predicted_class"]).mean()) if len(linked) else float("nan"),
        "macro_f1": float(agreement["f1"].dropna().mean()) if agreement["f1"].notna().any() else float("nan"),
        "tiles_per_s": len(tiles) / max(wall, 1e-9), "wall_s": wall,
    }
    folder.summary.write_text(json.dumps(summary, indent=2))
    return summary, agreement


def _mark_seen_xenium(xen: np.ndarray, cells: np.ndarray, x0: int, y0: int, tiles: set[tuple[int, int]], stride: int,
                      size: int, seen: np.ndarray) -> None:
    """Xenium nuclei this tile owns (same rule as the predictions): the denominator of detection recall."""
    k = int(xen.max())
    if k == 0:
        return
    ys, xs = np.nonzero(xen)
    v = xen[ys, xs]
    area = np.bincount(v, minlength=k + 1)
    present = np.flatnonzero(area[1:]) + 1
    cx = np.bincount(v, weights=xs, minlength=k + 1)[present] / area[present]
    cy = np.bincount(v, weights=ys, minlength=k + 1)[present] / area[present]
    mine = owned_by_tile(cx + x0, cy + y0, x0, y0, tiles, stride, size)
    seen[cells[present[mine] - 1]] = True
