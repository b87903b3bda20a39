"""A slide's training-data exports, in the layouts other tools read.

``exports/<slide_id>/`` (one folder per slide, written atomically) holds:

- ``cell_labels.parquet``: the harmonized labels of every cell;
- ``cellvit/<mag>/<grouping>/``: ``images/<name>.png``, ``labels/<name>.npz`` (``inst_map``,
  ``type_map``, ``cell_id_map``), ``cell_count.csv``, ``types.csv`` and ``patches.csv`` (QC);
- ``pannuke/<mag>/<grouping>/``: ``images.npy`` (N, 256, 256, 3) uint8, ``masks.npy``
  (N, 256, 256, C + 1) with one instance channel per class and the background last,
  ``types.npy`` (tissue names) and ``patch_ids.npy``;
- ``sdata.zarr`` + ``he_image.ome.tif`` (hard link) + ``he_image.json``: open with
  ``open_registered_he`` for the registered H&E, nucleus and cell boundaries, the cell table with its
  labels, and every patch as a shape carrying its QC metrics.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from sthelar_platform.core.atomic import link_or_copy
from sthelar_platform.core.categories import CategorySystem
from sthelar_platform.core.config import TilingConfig
from sthelar_platform.core.errors import InputError, require_readable_parquet, require_stage_output
from sthelar_platform.core.warehouse import (
    AgreementFolder,
    CellCountsFolder,
    CellTypesFolder,
    CellViTLayoutFolder,
    PatchesFolder,
    SlideExportFolder,
    XeniumSlideFolder,
)
from sthelar_platform.tiling.patches import load_labels, save_npz

CELL_LABEL_COLUMNS = ["cell_id", "category", "detailed_class", "grouped_class", "confidence", "tangram_label",
                      "cluster", "flagged"]


def link_patch_file(src: Path, dst: Path) -> None:
    """A patch file placed without extra disk (hard link, copy across filesystems); a missing one is named."""
    if not src.exists():
        raise InputError(src, "patch file missing", "materialize the patches for this slide again")
    link_or_copy(src, dst)


def export_cellvit(patches_dir: Path, qc: pd.DataFrame, grouping: str, classes: tuple[str, ...], out: Path,
                   compresslevel: int = 1) -> int:
    """CellViT-style folder for one magnification and grouping; returns the number of patches."""
    src, dst = PatchesFolder(patches_dir), CellViTLayoutFolder(out)
    dst.images.mkdir(parents=True)
    dst.labels.mkdir()
    counts = []
    for row in qc.itertuples(index=False):
        link_patch_file(src.images / f"{row.name}.png", dst.image(row.name))
        lab = load_labels(src.labels / f"{row.name}.npz")
        save_npz(dst.label(row.name), {"inst_map": lab["inst_map"], "type_map": lab[f"type_map_{grouping}"],
                                       "cell_id_map": lab["cell_id_map"]}, compresslevel)
        counts.append(np.bincount(_instance_classes(lab["inst_map"], lab[f"type_map_{grouping}"]),
                                  minlength=len(classes) + 1)[1:])
    cc = pd.DataFrame(np.asarray(counts, int).reshape(-1, len(classes)), columns=list(classes))
    cc.insert(0, "Image", [f"{n}.png" for n in qc["name"]])
    cc.to_csv(dst.cell_count, index=False)
    pd.DataFrame({"img": [f"{n}.png" for n in qc["name"]], "type": qc["tissue"].to_numpy()}).to_csv(dst.types, index=False)
    qc.to_csv(dst.patches, index=False)
    return len(qc)


def _instance_classes(inst: np.ndarray, type_map: np.ndarray) -> np.ndarray:
    """Class value (index + 1) of each instance 1..n of a patch, from its pixels."""
    n = int(inst.max())
    cls = np.zeros(n + 1, np.int64)
    cls[inst.ravel()] = type_map.ravel()
    return cls[1:]


def mask_dtype(spec: str, max_instances: int) -> np.dtype:
    """``auto``: the smallest unsigned integer type that holds every instance id exactly."""
    if spec != "auto":
        return np.dtype(spec)
    return next(np.dtype(t) for t in ("uint8", "uint16", "uint32") if max_instances <= np.iinfo(t).max)


def export_pannuke(patches_dir: Path, qc: pd.DataFrame, grouping: str, n_classes: int, out: Path, dtype: str,
                   images_from: Path | None = None) -> None:
    """PanNuke arrays, streamed into memory-mapped .npy files (never the whole stack in RAM)."""
    out.mkdir(parents=True)
    mask_type = mask_dtype(dtype, int(qc["n_nuclei"].max()) if len(qc) else 0)
    n, size = len(qc), 256
    if images_from is not None:
        link_patch_file(images_from, out / "images.npy")
    else:
        images = np.lib.format.open_memmap(out / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    masks = np.lib.format.open_memmap(out / "masks.npy", mode="w+", dtype=mask_type,
                                      shape=(n, size, size, n_classes + 1))
    for i, row in enumerate(qc.itertuples(index=False)):
        if images_from is None:
            path = PatchesFolder(patches_dir).images / f"{row.name}.png"
            bgr = cv2.imread(str(path))
            if bgr is None:
                raise InputError(path, "patch image missing or unreadable", "materialize the patches for this slide again")
            images[i] = bgr[..., ::-1]
        lab = load_labels(PatchesFolder(patches_dir).labels / f"{row.name}.npz")
        inst, types = lab["inst_map"], lab[f"type_map_{grouping}"]
        for c in range(n_classes):
            masks[i, ..., c] = np.where(types == c + 1, inst, 0)
        masks[i, ..., n_classes] = inst == 0
    if images_from is None:
        images.flush()
        del images
    masks.flush()
    del masks
    np.save(out / "types.npy", qc["tissue"].to_numpy().astype(str))
    np.save(out / "patch_ids.npy", qc["name"].to_numpy().astype(str))


def export_sdata(registered_dir: Path, cell_h5ad: Path, labels: pd.DataFrame, cell_boundaries: Path,
                 patch_tables: dict[str, pd.DataFrame], morph_um: float, out_dir: Path) -> list[str]:
    """The per-slide SpatialData (``sdata.zarr`` + the hard-linked H&E and its affine); returns its element names.

    ``open_registered_he(out_dir)`` gives it whole, the H&E attached lazily from the one stored pyramid.
    """
    import anndata as ad
    import geopandas as gpd
    import shapely
    import spatialdata as sd
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Scale

    from sthelar_platform.registration.registered_he import IMAGE_FILE, IMAGE_META, SDATA, link_image, nucleus_shapes

    out_zarr = out_dir / SDATA
    shutil.copytree(require_stage_output(registered_dir / SDATA, "registered_he"), out_zarr)  # shapes only: small
    meta = json.loads(require_stage_output(registered_dir / IMAGE_META, "registered_he").read_text())
    link_image(registered_dir / IMAGE_FILE, meta["affine_he_px_to_global"], out_dir)
    sdata = sd.read_zarr(out_zarr)
    sdata["cell_boundaries"] = nucleus_shapes(cell_boundaries, morph_um)
    sdata.write_element("cell_boundaries")
    table = ad.read_h5ad(require_stage_output(cell_h5ad, CellCountsFolder.stage))
    extra = labels.set_index("cell_id").reindex(table.obs["cell_id"].astype(str))
    for col in CELL_LABEL_COLUMNS[1:]:
        if col in extra:
            values = extra[col].to_numpy()
            table.obs[col] = values.astype(str) if values.dtype == object else values
    table.obs.index = table.obs.index.astype(str)
    table.uns.pop("spatialdata_attrs", None)
    sdata["table"] = TableModel.parse(table, region="cell_boundaries", region_key="region", instance_key="cell_id")
    sdata.write_element("table")
    for mag, qc in patch_tables.items():
        corners = np.asarray(qc["corners_um"].tolist(), float).reshape(-1, 4, 2)
        cols = qc.drop(columns=["corners_um"]).reset_index(drop=True)
        cols.index = cols["patch_id"].astype(str)
        gdf = gpd.GeoDataFrame(cols, geometry=shapely.polygons(corners) if len(corners) else [])
        name = f"patches_{mag}"
        sdata[name] = ShapesModel.parse(gdf, transformations={"global": Scale([1 / morph_um, 1 / morph_um], axes=("x", "y"))})
        sdata.write_element(name)
    return sorted([meta["element"], *sdata.shapes, *sdata.tables])


def write_slide_export(slide_id: str, dirs: dict[str, Path], morph_um: float, out: Path, cfg: TilingConfig,
                       categories: CategorySystem, progress: Callable[[str], None] | None = None) -> dict:
    """All exports of one slide into ``out`` (a temporary folder the caller renames into place)."""
    cats = categories
    ecfg = cfg.exports
    folder = SlideExportFolder(out)
    labels = pd.read_parquet(require_readable_parquet(CellTypesFolder(dirs["cell_types"]).cell_labels, "cell_types"))
    labels[[c for c in CELL_LABEL_COLUMNS if c in labels] + [c for c in labels if c not in CELL_LABEL_COLUMNS]].to_parquet(
        folder.cell_labels)
    agreement = pd.read_parquet(require_readable_parquet(AgreementFolder(dirs["segmentation_agreement"]).agreement,
                                                         "segmentation_agreement"))
    summary: dict = {"slide_id": slide_id, "cellvit": {}, "pannuke": {}}
    patch_tables = {}
    for mag in ("40x", "20x"):
        pdir = dirs[PatchesFolder.stage_of(mag)]
        patch_summary = json.loads(require_stage_output(PatchesFolder(pdir).summary, pdir.name).read_text())
        if "skipped" in patch_summary:  # a 20x-only scan has no 40x export, and says why
            summary[f"skipped_{mag}"] = patch_summary["skipped"]
            continue
        patches = pd.read_parquet(require_readable_parquet(PatchesFolder(pdir).patches, pdir.name))
        qc = patches.merge(agreement[agreement["magnification"] == mag].drop(
            columns=["slide_id", "magnification", "name", "x0", "y0", "n_nuclei", "tissue"]), on="patch_id", how="left")
        # level downsample of this magnification: places its patches in level-0 pixels (one split for all)
        qc["downsample"] = float(patch_summary["downsample"])
        patch_tables[mag] = qc.drop(columns=["counts_detailed", "counts_grouped"])
        keep = qc[~qc["flagged"].fillna(False).astype(bool)] if ecfg.drop_flagged else qc
        keep = keep.drop(columns=["counts_detailed", "counts_grouped", "corners_um"])
        first_images = None
        for grouping, g in cats.groupings.items():
            if progress:
                progress(f"{mag} {grouping}")
            n = export_cellvit(pdir, keep, grouping, g.classes, folder.cellvit / mag / grouping,
                               cfg.patches.label_compression)
            summary["cellvit"][f"{mag}/{grouping}"] = n
            if ecfg.pannuke:
                target = folder.pannuke / mag / grouping
                export_pannuke(pdir, keep, grouping, len(g.classes), target, ecfg.pannuke_mask_dtype, first_images)
                first_images = first_images or target / "images.npy"
                summary["pannuke"][f"{mag}/{grouping}"] = n
        summary[f"n_dropped_flagged_{mag}"] = int(len(qc) - len(keep))
    if progress:
        progress("sdata.zarr")
    summary["sdata_elements"] = export_sdata(dirs["registered_he"], CellCountsFolder(dirs["cell_counts"]).cell,
                                             labels, XeniumSlideFolder(dirs["xenium_slide"]).cell_boundaries, patch_tables,
                                             morph_um, out)
    folder.summary.write_text(json.dumps(summary, indent=2))  # the training dataset reads what was skipped
    return summary


def skipped_magnification(export_dir: Path, magnification: str) -> str | None:
    """Why a slide's export has no ``magnification`` (e.g. a 20x-only scan), or None when it has one."""
    path = SlideExportFolder(export_dir).summary
    return json.loads(path.read_text()).get(f"skipped_{magnification}") if path.exists() else None
