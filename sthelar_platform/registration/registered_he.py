"""The H&E as a SpatialData image element in the Xenium coordinate system, without a second copy.

A registered folder holds ``sdata.zarr`` (the nucleus boundaries, µm with a ``Scale`` to the
``global`` coordinate system of Xenium morphology pixels, as spatialdata-io's Xenium reader uses),
``he_image.ome.tif`` (a hard link of the platform's one stored H&E pyramid) and ``he_image.json``
(its ``Affine`` to ``global``). :func:`open_registered_he` returns one SpatialData with the image
attached lazily: pixels stream from the TIFF tile by tile through dask, and no pixel is ever
written into the zarr (a zarr image would be a full copy of the slide).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from sthelar_platform.core.atomic import link_or_copy
from sthelar_platform.core.errors import require_stage_output
from sthelar_platform.core.imaging import open_pyramid, pyramid_shapes
from sthelar_platform.core.warehouse import HEImageFolder, RegisteredHEFolder

ELEMENT = "he"
SHAPES = "nucleus_boundaries"
IMAGE_FILE = HEImageFolder.image.name          # the hard link keeps the ingested pyramid's name
IMAGE_META = RegisteredHEFolder.image_meta.name
SDATA = RegisteredHEFolder.sdata.name


def nucleus_shapes(boundaries: str | Path, morph_um: float):
    """Nucleus (or cell) polygons (µm) as a SpatialData shapes element indexed by Xenium cell id.

    Rings are the runs of equal (cell_id, label_id); a cell with several nuclei gets one MultiPolygon
    of separate polygons, never one merged ring.
    """
    import geopandas as gpd
    import shapely
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Scale

    names = pl.read_parquet_schema(boundaries)
    df = pl.read_parquet(boundaries, columns=["cell_id", "vertex_x", "vertex_y"] + (["label_id"] if "label_id" in names else []))
    ids = df["cell_id"].to_numpy()
    new_ring = np.r_[True, ids[1:] != ids[:-1]]
    if "label_id" in df.columns:
        labels = df["label_id"].to_numpy()
        new_ring |= np.r_[True, labels[1:] != labels[:-1]]
    starts = np.flatnonzero(new_ring)
    ring_of_vertex = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(ids)]))
    polygons = shapely.polygons(shapely.linearrings(df.select("vertex_x", "vertex_y").to_numpy(), indices=ring_of_vertex))
    ring_cells = ids[starts].astype(str)
    cells, first = np.unique(ring_cells, return_index=True)
    if len(cells) < len(ring_cells):  # several nuclei in one cell: a MultiPolygon of its polygons
        cell_of_ring = np.searchsorted(cells, ring_cells)
        counts = np.bincount(cell_of_ring, minlength=len(cells))
        by_cell = np.argsort(cell_of_ring, kind="stable")
        start = np.r_[0, np.cumsum(counts)[:-1]]
        geoms = polygons[first].copy()
        for i in np.flatnonzero(counts > 1):
            geoms[i] = shapely.multipolygons(polygons[by_cell[start[i]:start[i] + counts[i]]])
        keep_order = np.argsort(first)  # the file's cell order
        polygons, ring_cells = geoms[keep_order], cells[keep_order]
    gdf = gpd.GeoDataFrame({"geometry": polygons}, index=ring_cells)
    gdf.index.name = "cell_id"
    return ShapesModel.parse(gdf, transformations={"global": Scale([1 / morph_um, 1 / morph_um], axes=("x", "y"))})


def write_registered_he(he_path: str | Path, transform: np.ndarray, boundaries: str | Path, morph_um: float,
                        out_dir: str | Path) -> dict:
    """Write the registered folder (shapes zarr, hard-linked H&E, its affine); returns the level shapes."""
    from spatialdata import SpatialData

    out_dir = Path(out_dir)
    info = open_pyramid(he_path)
    stored = link_image(he_path, np.asarray(transform, float).tolist(), out_dir)
    SpatialData(shapes={SHAPES: nucleus_shapes(boundaries, morph_um)}).write(out_dir / SDATA)
    levels = pyramid_shapes(info.height, info.width)
    return {"levels": [list(s) for s in levels], "image_stored_as": stored}


def link_image(he_path: str | Path, affine: list[list[float]], out_dir: Path) -> str:
    """Place the H&E (hard link) and its affine to ``global`` in ``out_dir``."""
    stored = link_or_copy(he_path, out_dir / IMAGE_FILE)
    (out_dir / IMAGE_META).write_text(json.dumps({"element": ELEMENT, "file": IMAGE_FILE, "coordinate_system": "global",
                                                  "affine_he_px_to_global": affine}, indent=2))
    return stored


def open_registered_he(folder: str | Path, chunk: int = 1024):
    """The folder's SpatialData (``sdata.zarr``) with the H&E attached lazily as image ``he`` in ``global``."""
    import dask.array as da
    import spatialdata as sd
    import tifffile
    import zarr
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Affine

    folder = Path(folder)
    sdata = sd.read_zarr(require_stage_output(folder / SDATA, "registered_he"))
    meta = json.loads(require_stage_output(folder / IMAGE_META, "registered_he").read_text())
    path = folder / meta["file"]
    info = open_pyramid(path)
    level0 = da.from_zarr(zarr.open(tifffile.imread(path, aszarr=True, level=0), mode="r"))
    level0 = level0.rechunk((chunk, chunk, -1))[..., :3]
    sdata[meta["element"]] = Image2DModel.parse(
        level0.transpose(2, 0, 1), dims=("c", "y", "x"), c_coords=["r", "g", "b"],
        scale_factors=[2] * (len(pyramid_shapes(info.height, info.width)) - 1) or None, chunks=(3, chunk, chunk),
        transformations={"global": Affine(np.asarray(meta["affine_he_px_to_global"], float), input_axes=("x", "y"),
                                          output_axes=("x", "y"))},
    )
    return sdata
