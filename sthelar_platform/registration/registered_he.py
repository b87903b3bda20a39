"""The H&E as a SpatialData image element in the Xenium coordinate system.

The zarr holds the H&E pyramid (``images/he``) with an ``Affine`` to the ``global``
coordinate system (Xenium morphology pixels, as spatialdata-io's Xenium reader uses), and
the nucleus boundaries (``shapes/nucleus_boundaries``, µm with a ``Scale`` to ``global``),
so ``spatialdata.read_zarr`` gives both already overlaid. Pixels stream from the TIFF
tile by tile through dask: level 0 is never held in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from sthelar_platform.core.imaging import open_pyramid, pyramid_shapes

ELEMENT = "he"
SHAPES = "nucleus_boundaries"


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
                        out_zarr: str | Path, chunk: int = 1024) -> dict:
    """Write the SpatialData zarr; returns the element's level shapes."""
    import dask.array as da
    import tifffile
    import zarr
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Affine

    info = open_pyramid(he_path)
    store = tifffile.imread(he_path, aszarr=True, level=0)
    try:
        level0 = da.from_zarr(zarr.open(store, mode="r")).rechunk((chunk, chunk, -1))[..., :3]
        levels = pyramid_shapes(info.height, info.width)
        image = Image2DModel.parse(
            level0.transpose(2, 0, 1), dims=("c", "y", "x"), c_coords=["r", "g", "b"],
            scale_factors=[2] * (len(levels) - 1) or None, chunks=(3, chunk, chunk),
            transformations={"global": Affine(np.asarray(transform, float), input_axes=("x", "y"), output_axes=("x", "y"))},
        )
        sdata = SpatialData(images={ELEMENT: image}, shapes={SHAPES: nucleus_shapes(boundaries, morph_um)})
        sdata.write(Path(out_zarr))
    finally:
        store.close()
    return {"levels": [list(s) for s in levels]}
