"""256 px H&E patches with nucleus instance, cell-type and cell-id masks, at 40x or 20x.

The grid starts at the image corner with a stride of ``size - overlap`` pixels of the
chosen pyramid level, so patch ids (``<mag>_x<x0>_y<y0>``) are the same on every run.
The slide is streamed region by region (``region_patches`` x ``region_patches`` patches):
each region's H&E pixels are read once, its nuclei drawn once, and its patches cut from
both. Peak memory does not grow with the slide.

Coordinates: continuous H&E pixel coordinates where level-0 pixel ``i`` covers ``[i, i+1)``
(the registration's convention); a level-``k`` pixel covers ``2**k`` level-0 pixels.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage

from sthelar_platform.core.categories import CategorySystem
from sthelar_platform.core.config.tiling import PatchesConfig, TilingConfig, TissueMaskConfig
from sthelar_platform.core.displacement import DisplacementField
from sthelar_platform.core.errors import ConfigError, InputError, require_readable_parquet, require_stage_output
from sthelar_platform.core.ids import mask_ints
from sthelar_platform.core.imaging import PyramidInfo, open_pyramid, read_level, read_level_region
from sthelar_platform.core.warehouse import CellTypesFolder, PatchesFolder, XeniumSlideFolder
from sthelar_platform.tiling.masks import load_nucleus_polygons, rasterize_region

LABEL_KEYS = ("inst_map", "type_map_detailed", "type_map_grouped", "cell_id_map")


@dataclass(frozen=True)
class PatchLevel:
    magnification: str
    level: int
    downsample: float     # level-0 pixels per level pixel
    um_per_px: float      # fitted by the registration, not read from metadata


def choose_level(info: PyramidInfo, level0_um: float, magnification: str,
                 ranges: Mapping[str, tuple[float, float]]) -> PatchLevel:
    """The pyramid level at ``magnification``; a clear error when the H&E has no such level."""
    if magnification not in ranges:
        raise ConfigError("pipeline.yaml", "he_image.magnification_um_per_px", f"unknown magnification {magnification!r}",
                          f"use one of {sorted(ranges)} or add its µm/px range there")
    lo, hi = ranges[magnification]
    found = []
    for k in range(len(info.level_shapes)):
        down = info.downsample(k)
        px = level0_um * down
        if lo <= px <= hi:
            return PatchLevel(magnification, k, float(down), float(px))
        found.append(f"level {k}: {px:.3f} µm/px")
    raise InputError(info.path, f"no pyramid level at {magnification} ({lo}-{hi} µm/px); the levels are "
                     + ", ".join(found),
                     f"export the H&E as a pyramidal TIFF that includes a {magnification} level (e.g. bfconvert "
                     "-pyramid-resolutions with scale 2), or drop this magnification from the job")


def tissue_mask(he_path: Path, info: PyramidInfo, cfg: TissueMaskConfig) -> tuple[np.ndarray, float]:
    """Boolean tissue mask on a low-resolution level and that level's downsample from level 0."""
    level = next((k for k, s in enumerate(info.level_shapes) if max(s[:2]) <= cfg.thumbnail_max_px),
                 len(info.level_shapes) - 1)
    rgb = read_level(he_path, level)[..., :3].astype(np.float32)
    brightness = rgb.mean(-1)
    mx, mn = rgb.max(-1), rgb.min(-1)
    saturation = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1), 0)
    mask = (brightness < cfg.max_background_brightness) | (saturation > cfg.min_saturation)
    if cfg.closing_px:
        mask = ndimage.binary_closing(mask, iterations=int(cfg.closing_px))
    mask = ndimage.binary_fill_holes(mask)
    return mask, info.downsample(level)


def patch_grid(height: int, width: int, size: int, overlap: int) -> pd.DataFrame:
    """All full-size patches of a level (a partial patch at the border is never made)."""
    stride = size - overlap
    if stride <= 0:
        raise ConfigError("tiling.yaml", "patches.overlap_px", f"overlap {overlap} must be smaller than the patch size {size}",
                          "lower patches.overlap_px")
    ys = np.arange(0, height - size + 1, stride)
    xs = np.arange(0, width - size + 1, stride)
    row, col = np.meshgrid(np.arange(len(ys)), np.arange(len(xs)), indexing="ij")
    return pd.DataFrame({"row": row.ravel(), "col": col.ravel(), "x0": xs[col.ravel()], "y0": ys[row.ravel()]})


def tissue_fractions(grid: pd.DataFrame, mask: np.ndarray, mask_down: float, level_down: float, size: int) -> np.ndarray:
    """Fraction of tissue under each patch, from a summed-area table of the mask (vectorized)."""
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1))
    sat[1:, 1:] = mask.cumsum(0).cumsum(1)
    f = level_down / mask_down
    x0 = np.clip(np.floor(grid["x0"].to_numpy() * f).astype(int), 0, mask.shape[1])
    y0 = np.clip(np.floor(grid["y0"].to_numpy() * f).astype(int), 0, mask.shape[0])
    x1 = np.clip(np.maximum(np.ceil((grid["x0"].to_numpy() + size) * f).astype(int), x0 + 1), 0, mask.shape[1])
    y1 = np.clip(np.maximum(np.ceil((grid["y0"].to_numpy() + size) * f).astype(int), y0 + 1), 0, mask.shape[0])
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    return (sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]) / area


def um_to_level_px(he_px_to_um: np.ndarray, downsample: float) -> np.ndarray:
    """3x3 affine from Xenium µm to level pixel-centre coordinates (OpenCV's convention)."""
    to_level = np.array([[1 / downsample, 0, -0.5], [0, 1 / downsample, -0.5], [0, 0, 1]])
    return to_level @ np.linalg.inv(he_px_to_um)


def patch_corners_um(x0: np.ndarray, y0: np.ndarray, size: int, downsample: float, he_px_to_um: np.ndarray,
                     warp: DisplacementField | None = None) -> np.ndarray:
    """(n, 4, 2) patch corners in Xenium µm (the patch's pixel edges, clockwise from top-left)."""
    cx = np.stack([x0, x0 + size, x0 + size, x0], 1) * downsample
    cy = np.stack([y0, y0, y0 + size, y0 + size], 1) * downsample
    pts = (np.stack([cx, cy, np.ones_like(cx, dtype=float)], -1) @ he_px_to_um.T)[..., :2]
    return pts if warp is None else warp.forward(pts.reshape(-1, 2)).reshape(pts.shape)


def iter_regions(tiles: pd.DataFrame, size: int, region_tiles: int) -> Iterator[tuple[pd.DataFrame, int, int, int, int]]:
    """Group grid tiles into square regions of ``region_tiles`` per side: (tiles, x0, y0, height, width).

    A region is read (and its nuclei drawn) once for all its tiles: streaming, bounded memory.
    """
    for _, block in tiles.groupby([tiles["row"] // region_tiles, tiles["col"] // region_tiles], sort=True):
        bx0, by0 = int(block["x0"].min()), int(block["y0"].min())
        yield block, bx0, by0, int(block["y0"].max()) + size - by0, int(block["x0"].max()) + size - bx0


def encode_png(rgb: np.ndarray, compression: int) -> bytes:
    """PNG bytes of an RGB patch at the given zlib level."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def save_npz(path: Path, arrays: dict[str, np.ndarray], compresslevel: int) -> None:
    """``np.savez_compressed`` with a chosen zlib level (numpy's is fixed at 6, 3x slower here)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=compresslevel) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(f"{key}.npy", buf.getvalue())


def load_labels(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a patch's labels ``.npz``; a missing or damaged file is an InputError."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(path, f"patch labels missing or unreadable ({type(exc).__name__})",
                         "materialize the stage that wrote this folder again") from exc


def cell_class_tables(cell_ids: np.ndarray, labels: pd.DataFrame, categories: CategorySystem) -> dict[str, np.ndarray]:
    """Per polygon cell: type-map value in each grouping and the integer cell id used in masks."""
    cats = categories
    category = labels.set_index("cell_id")["category"].reindex(cell_ids).fillna("Unknown").to_numpy()
    out = {"cell_id_int": mask_ints(cell_ids)[0] if len(cell_ids) else np.zeros(0, np.int64)}
    for name, grouping in cats.groupings.items():
        lut = {c: grouping.class_index(c) for c in cats.all_labels}
        out[name] = np.array([lut[c] for c in category], np.int32)
        out[f"{name}_n_classes"] = np.asarray(len(grouping.classes), np.int32)
    return out


def _patch_arrays(region: np.ndarray, cells: np.ndarray, tables: dict[str, np.ndarray], py: int, px: int,
                  size: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    sub = region[py:py + size, px:px + size]
    present = np.zeros(len(cells) + 1, bool)
    present[sub.ravel()] = True
    present[0] = False
    local = np.flatnonzero(present)             # region values of the nuclei in this patch, ascending
    lut = np.zeros(len(cells) + 1, np.int32)
    lut[local] = np.arange(1, len(local) + 1)  # contiguous instance ids 1..n, ordered by cell id
    inst = lut[sub]
    patch_cells = cells[local - 1]
    arrays = {"inst_map": inst}
    counts = {}
    for name in ("detailed", "grouped"):
        cls = np.r_[0, tables[name][patch_cells]].astype(np.int32)
        arrays[f"type_map_{name}"] = cls[inst]
        counts[name] = np.bincount(cls[1:], minlength=int(tables[f"{name}_n_classes"]) + 1)[1:]  # nuclei per class
    arrays["cell_id_map"] = np.r_[0, tables["cell_id_int"][patch_cells]].astype(np.int64)[inst]
    return arrays, counts


def write_patches(slide_id: str, tissue: str, he_path: Path, boundaries: Path, labels_path: Path,
                  he_px_to_um: np.ndarray, level0_um: float, magnification: str, out: Path, cfg: TilingConfig,
                  categories: CategorySystem, magnifications: Mapping[str, tuple[float, float]],
                  progress: Callable[[int, int], None] | None = None,
                  warp: DisplacementField | None = None) -> dict:
    """Write ``images/``, ``labels/`` and ``patches.parquet`` for one slide and magnification.

    ``magnifications``: each magnification's µm/px range (pipeline.yaml ``he_image``); ``warp``: the
    registration's non-rigid correction, applied to the masks and the patch corners.
    """
    pcfg = cfg.patches
    folder = PatchesFolder(out)
    size, overlap = int(pcfg.size_px), int(pcfg.overlap_px)
    info = open_pyramid(he_path)
    lo, hi = magnifications.get(magnification, (0, float("inf")))
    if level0_um > hi:  # the scan is coarser than this magnification (e.g. a 20x-only scan asked for 40x)
        return _skipped(slide_id, tissue, magnification, level0_um, out)
    lv = choose_level(info, level0_um, magnification, magnifications)
    h, w = info.level_shapes[lv.level][:2]
    labels = pd.read_parquet(require_readable_parquet(labels_path, CellTypesFolder.stage), columns=["cell_id", "category"])
    polys = load_nucleus_polygons(require_stage_output(boundaries, XeniumSlideFolder.stage), um_to_level_px(he_px_to_um, lv.downsample),
                                  warp)
    tables = cell_class_tables(polys.cell_ids, labels, categories)
    grid = patch_grid(h, w, size, overlap)
    mask, mask_down = tissue_mask(he_path, info, pcfg.tissue)
    grid["tissue_fraction"] = tissue_fractions(grid, mask, mask_down, lv.downsample, size)
    candidates = grid[grid["tissue_fraction"] >= pcfg.min_tissue_fraction]
    folder.images.mkdir()
    folder.labels.mkdir()
    rows: list[dict] = []
    stride = size - overlap
    regions = list(iter_regions(candidates, size, int(pcfg.region_patches)))
    with ThreadPoolExecutor(pcfg.workers) as pool:
        pending = []
        for i, (block, bx0, by0, bh, bw) in enumerate(regions):
            region, cells = rasterize_region(polys, bx0, by0, bh, bw)
            if len(cells):
                rgb = None
                for p in block.itertuples(index=False):
                    arrays, counts = _patch_arrays(region, cells, tables, p.y0 - by0, p.x0 - bx0, size)
                    n = int(arrays["inst_map"].max())
                    if n < pcfg.min_nuclei:
                        continue
                    if rgb is None:
                        rgb = read_level_region(he_path, lv.level, by0, bx0, bh, bw)[..., :3]
                    patch_id = f"{magnification}_x{p.x0:06d}_y{p.y0:06d}"
                    name = f"{slide_id}_{patch_id}"
                    image = rgb[p.y0 - by0:p.y0 - by0 + size, p.x0 - bx0:p.x0 - bx0 + size]
                    pending.append(pool.submit(_write_one, out, name, image, arrays, pcfg))
                    rows.append({"patch_id": patch_id, "name": name, "row": p.row, "col": p.col, "x0": p.x0, "y0": p.y0,
                                 "tissue_fraction": float(p.tissue_fraction), "n_nuclei": n,
                                 "counts_detailed": counts["detailed"].tolist(),
                                 "counts_grouped": counts["grouped"].tolist()})
            if len(pending) > 256:  # bounded queue: encoded patches never pile up in memory
                for f in pending:
                    f.result()
                pending = []
            if progress:
                progress(i + 1, len(regions))
        for f in pending:
            f.result()
    table = pd.DataFrame(rows, columns=["patch_id", "name", "row", "col", "x0", "y0", "tissue_fraction", "n_nuclei",
                                        "counts_detailed", "counts_grouped"])
    corners = patch_corners_um(table["x0"].to_numpy(), table["y0"].to_numpy(), size, lv.downsample, he_px_to_um, warp)
    table["corners_um"] = [c.ravel().tolist() for c in corners]
    table.insert(0, "slide_id", slide_id)
    table.insert(1, "magnification", magnification)
    table["tissue"] = tissue
    table.to_parquet(folder.patches)
    drawn_cells = len(polys.cell_ids)
    summary = {
        "slide_id": slide_id, "tissue": tissue, "magnification": magnification, "level": lv.level,
        "um_per_px": round(lv.um_per_px, 5), "downsample": lv.downsample, "size_px": size, "overlap_px": overlap,
        "stride_px": stride, "level_shape": [int(h), int(w)], "n_grid": len(grid), "n_tissue": len(candidates),
        "n_patches": len(table), "n_nuclei_in_patches": int(table["n_nuclei"].sum()) if len(table) else 0,
        "n_nuclei_drawn": drawn_cells, "n_empty_polygons": polys.n_empty, "n_repaired_polygons": polys.n_repaired,
        "n_multipart_nuclei": polys.n_multipart,
        "n_cells_without_nucleus": int(len(set(labels["cell_id"]) - set(polys.cell_ids))),
        "label_keys": list(LABEL_KEYS),
        "nuclei_per_class_detailed": dict(zip(
            categories.groupings["detailed"].classes,
            (int(n) for n in (np.sum(table["counts_detailed"].tolist(), axis=0) if len(table)
                              else np.zeros(int(tables["detailed_n_classes"]), int))), strict=True)),
    }
    folder.summary.write_text(json.dumps(summary, indent=2))
    draw_patch_overview(he_path, info, table, lv, size, folder.overview)
    return summary


PATCH_COLUMNS = ["slide_id", "magnification", "patch_id", "name", "row", "col", "x0", "y0", "tissue_fraction",
                 "n_nuclei", "counts_detailed", "counts_grouped", "corners_um", "tissue"]


def _skipped(slide_id: str, tissue: str, magnification: str, level0_um: float, out: Path) -> dict:
    """An empty patch set that says why: the scan has no level this fine."""
    folder = PatchesFolder(out)
    folder.images.mkdir()
    folder.labels.mkdir()
    pd.DataFrame(columns=PATCH_COLUMNS).to_parquet(folder.patches)
    summary = {"slide_id": slide_id, "tissue": tissue, "magnification": magnification, "n_patches": 0,
               "n_tissue": 0, "n_repaired_polygons": 0, "n_empty_polygons": 0,
               "skipped": f"no {magnification} level (scan is {level0_um:.2f} µm/px)"}
    folder.summary.write_text(json.dumps(summary, indent=2))
    return summary


def _write_one(out: Path, name: str, image: np.ndarray, arrays: dict[str, np.ndarray], pcfg: PatchesConfig) -> None:
    folder = PatchesFolder(out)
    (folder.images / f"{name}.png").write_bytes(encode_png(image, pcfg.png_compression))
    save_npz(folder.labels / f"{name}.npz", arrays, pcfg.label_compression)


def draw_patch_overview(he_path: Path, info: PyramidInfo, table: pd.DataFrame, lv: PatchLevel, size: int,
                        path: Path, values: np.ndarray | None = None, max_px: int = 768) -> None:
    """Thumbnail with each patch outlined (or filled by ``values`` in [0, 1]: red -> green)."""
    level = next((k for k, s in enumerate(info.level_shapes) if max(s[:2]) <= max_px), len(info.level_shapes) - 1)
    thumb = np.ascontiguousarray(read_level(he_path, level)[..., :3])
    f = lv.downsample / info.downsample(level)
    overlay = thumb.copy()
    for i, (x0, y0) in enumerate(zip(table["x0"].to_numpy(), table["y0"].to_numpy(), strict=True)):
        p0 = (int(x0 * f), int(y0 * f))
        p1 = (int((x0 + size) * f), int((y0 + size) * f))
        if values is None:
            cv2.rectangle(overlay, p0, p1, (0, 160, 0), 1)
        else:
            v = values[i]
            colour = (128, 128, 128) if not np.isfinite(v) else (int(255 * (1 - v)), int(200 * v), 0)
            cv2.rectangle(overlay, p0, p1, colour, -1)
    blended = cv2.addWeighted(overlay, 0.45, thumb, 0.55, 0) if values is not None else overlay
    ok, buf = cv2.imencode(".png", blended[..., ::-1])
    path.write_bytes(buf.tobytes())
