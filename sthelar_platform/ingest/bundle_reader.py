"""Read a Xenium bundle's own files (cells.parquet, cell_feature_matrix.h5, boundary parquet files).

The fallback for bundles spatialdata-io misreads (an unparseable version string, a version string that
contradicts the files): the same elements ingest takes from the reader, read directly with polars and
h5py. Gene counts stay sparse; protein features (XOA 4) are split off and divided by the file's
``protein_scaling_factor``; each nucleus polygon keeps its own ``label_id`` (a cell may have two).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import polars as pl
from scipy import sparse

from sthelar_platform.core.errors import InputError

FIX = "re-copy the file from the instrument's output folder (it may be truncated) or re-run Xenium Ranger"


@dataclass(frozen=True)
class BundleTables:
    """The elements ingest persists: gene table, protein table (or None), nucleus and cell polygons."""

    table: ad.AnnData        # cells x genes, obs = cells.parquet (cell_id first), obsm["spatial"] = centroids (µm)
    protein: ad.AnnData | None
    nuclei: pl.DataFrame     # cell_id, vertex_x, vertex_y, label_id (one label per nucleus polygon)
    cells: pl.DataFrame      # cell_id, vertex_x, vertex_y


def _text(values: np.ndarray) -> np.ndarray:
    """Strings from an HDF5 / Parquet column that may hold bytes."""
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def _decode_column(frame: pl.DataFrame, name: str) -> pl.DataFrame:
    """``name`` as strings (some exports store ids as binary)."""
    return frame.with_columns(pl.col(name).cast(pl.String))


def read_matrix(h5: Path) -> tuple[sparse.csr_matrix, np.ndarray, pd.DataFrame, float | None]:
    """Cells x features counts (CSR), barcodes, features (id, name, feature_type) and the protein scale."""
    try:
        with h5py.File(h5, "r") as f:
            m = f["matrix"]
            shape = tuple(int(s) for s in m["shape"][:])
            x = sparse.csc_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=shape).T.tocsr()
            barcodes = _text(m["barcodes"][:])
            feats = m["features"]
            features = pd.DataFrame({"gene_ids": _text(feats["id"][:]), "name": _text(feats["name"][:]),
                                     "feature_types": _text(feats["feature_type"][:])})
            scale = f.attrs.get("protein_scaling_factor")
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(h5, f"not a readable 10x HDF5 matrix ({type(exc).__name__}: {exc})", FIX) from exc
    if x.shape != (len(barcodes), len(features)):
        raise InputError(h5, f"matrix shape {x.shape} does not match {len(barcodes)} barcodes x {len(features)} "
                         "features", FIX)
    return x, barcodes, features, None if scale is None else float(scale)


def _feature_table(x: sparse.csr_matrix, obs: pd.DataFrame, features: pd.DataFrame, kind: str,
                   dtype: type) -> ad.AnnData | None:
    sel = np.flatnonzero(features["feature_types"].to_numpy() == kind)
    if not len(sel):
        return None
    var = features.iloc[sel].set_index("name")
    var.index = var.index.astype(str)
    var.index.name = None
    return ad.AnnData(X=x[:, sel].astype(dtype), obs=obs.copy(), var=var)


def read_cells(path: Path) -> pd.DataFrame:
    """cells.parquet with string cell ids (bytes decoded)."""
    try:
        frame = pl.read_parquet(path)
    except pl.exceptions.PolarsError as exc:
        raise InputError(path, f"not a readable parquet file ({exc})", FIX) from exc
    return _decode_column(frame, "cell_id").to_pandas()


def read_boundaries(path: Path, with_labels: bool) -> pl.DataFrame:
    """Vertices of each polygon; without a ``label_id`` column (XOA 1.x) each cell's polygon gets one."""
    try:
        frame = pl.read_parquet(path)
    except pl.exceptions.PolarsError as exc:
        raise InputError(path, f"not a readable parquet file ({exc})", FIX) from exc
    frame = _decode_column(frame, "cell_id").with_columns(pl.col("vertex_x", "vertex_y").cast(pl.Float32))
    if frame.select(pl.col("vertex_x").is_nan().any() | pl.col("vertex_y").is_nan().any()).item():
        raise InputError(path, "NaN vertex coordinates", FIX)
    if not with_labels:
        return frame.select("cell_id", "vertex_x", "vertex_y")
    if "label_id" in frame.columns:
        return frame.select("cell_id", "vertex_x", "vertex_y", pl.col("label_id").cast(pl.Int64))
    # rows are contiguous per polygon: a new polygon starts where the cell id changes
    starts = (pl.col("cell_id") != pl.col("cell_id").shift(1)).fill_null(True)
    return frame.select("cell_id", "vertex_x", "vertex_y", starts.cast(pl.Int64).cum_sum().alias("label_id"))


def read_bundle(bundle: Path) -> BundleTables:
    """The bundle's tables and polygons from its own files, aligned on cells.parquet's order."""
    cells = read_cells(bundle / "cells.parquet")
    x, barcodes, features, scale = read_matrix(bundle / "cell_feature_matrix.h5")
    order = pd.Index(barcodes).get_indexer(cells["cell_id"].to_numpy())
    if (order < 0).any():
        missing = cells["cell_id"].to_numpy()[order < 0][:3].tolist()
        raise InputError(bundle / "cell_feature_matrix.h5", f"cells of cells.parquet missing from the matrix "
                         f"(e.g. {missing})", "copy cells.parquet and cell_feature_matrix.h5 from the same run")
    x = x[order]
    spatial = cells[["x_centroid", "y_centroid"]].to_numpy(np.float64)
    obs = cells.drop(columns=["x_centroid", "y_centroid"]).set_index(cells["cell_id"].astype(str).to_numpy())
    obs.index.name = None
    table = _feature_table(x, obs, features, "Gene Expression", np.float32)
    if table is None:
        raise InputError(bundle / "cell_feature_matrix.h5", "no 'Gene Expression' features",
                         "use the cell_feature_matrix.h5 of a Xenium gene-expression run")
    table.obsm["spatial"] = spatial
    protein = _feature_table(x, obs, features, "Protein Expression", np.float32)
    if protein is not None:
        if scale:
            protein.X = protein.X / scale  # XOA stores protein intensities fixed-point scaled
        protein.obsm["spatial"] = spatial
    return BundleTables(table=table, protein=protein,
                        nuclei=read_boundaries(bundle / "nucleus_boundaries.parquet", with_labels=True),
                        cells=read_boundaries(bundle / "cell_boundaries.parquet", with_labels=False))
