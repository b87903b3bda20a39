"""Ingest: read a Xenium bundle and persist what later stages need.

The generation is read from the files (``generation``). spatialdata-io reads the bundle whenever its
version branch matches the files; otherwise (an unparseable version such as ``"R&D"``, a string that
contradicts the layout) or when it fails, the bundle's own files are read (``bundle_reader``). The
summary names the path taken.

Output folder (``warehouse/xenium_slide/<slide_id>/``):
``expression.h5ad`` (cells x genes counts, obs = cells metadata; protein features, scaled back, in
``obsm["protein"]``), ``cells.parquet``, ``nucleus_boundaries.parquet`` (one row per vertex, µm, a
``label_id`` per nucleus polygon) / ``cell_boundaries.parquet``, ``transcripts.parquet`` (streamed,
typed, with ``is_control``), ``thumbnail_dapi.png`` and ``summary.json`` (which references the
bundle's DAPI image by path, size and mtime instead of copying it).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import shapely
from scipy import sparse

from sthelar_platform.core.config import IngestConfig
from sthelar_platform.core.errors import InputError
from sthelar_platform.core.ids import mask_ints
from sthelar_platform.core.imaging import first_plane_thumbnail
from sthelar_platform.core.thumbnails import save_png
from sthelar_platform.core.warehouse import XeniumSlideFolder
from sthelar_platform.core.wsi import check_tile_data_present
from sthelar_platform.ingest.bundle_reader import BundleTables, read_bundle
from sthelar_platform.ingest.generation import Generation, detect_generation
from sthelar_platform.ingest.xenium_bundle import CONTROL_PREFIXES, validate_bundle

TRANSCRIPT_COLUMNS = {"transcript_id": pl.UInt64, "cell_id": pl.String, "overlaps_nucleus": pl.UInt8,
                      "feature_name": pl.String, "x_location": pl.Float32, "y_location": pl.Float32,
                      "z_location": pl.Float32, "qv": pl.Float32}


@dataclass(frozen=True)
class XeniumIngestSummary:
    n_cells: int
    n_genes: int
    n_transcripts: int
    n_controls: int
    n_unassigned: int
    n_nuclei: int
    pixel_size_um: float
    analysis_sw_version: str
    morphology_levels: list[list[int]]
    generation: str
    reader: str
    n_proteins: int
    n_cells_without_nucleus: int
    n_multinucleate_cells: int
    layout: dict
    morphology_image: dict
    mask_id_scheme: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _read_with_spatialdata_io(bundle: Path) -> BundleTables:
    """The reader's elements as BundleTables (genes and protein split, as the direct reader does)."""
    from spatialdata_io import xenium

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            # Transcripts are streamed separately (polars) so a 10^8-row table never sits in memory.
            # only the table and the polygons: images and label rasters are not used (the DAPI is read lazily)
            sdata = xenium(bundle, transcripts=False, aligned_images=False, gex_only=False, morphology_focus=False,
                           morphology_mip=False, cells_labels=False, nucleus_labels=False)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(bundle, f"spatialdata-io could not read the Xenium bundle ({type(exc).__name__}: {exc})",
                         "check the bundle comes from Xenium Onboard Analysis >= 1.3 and is complete") from exc
    table = sdata["table"]
    kinds = table.var["feature_types"].astype(str).to_numpy() if "feature_types" in table.var else \
        np.full(table.n_vars, "Gene Expression")
    genes = table[:, kinds == "Gene Expression"].copy()
    protein = table[:, kinds == "Protein Expression"].copy() if (kinds == "Protein Expression").any() else None
    return BundleTables(table=genes, protein=protein, nuclei=_vertices(sdata["nucleus_boundaries"], "cell_id"),
                        cells=_vertices(sdata["cell_boundaries"], None))


def _vertices(gdf, id_column: str | None) -> pl.DataFrame:
    coords, owner = shapely.get_coordinates(gdf.geometry.values, return_index=True)
    # XOA >= 2.0: nuclei indexed by label_id with a cell_id column; 1.x: indexed by cell id, one nucleus per cell
    by_label = id_column is not None and id_column in gdf.columns
    ids = gdf[id_column].to_numpy() if by_label else gdf.index.to_numpy()
    frame = {"cell_id": ids[owner].astype(str), "vertex_x": coords[:, 0].astype(np.float32),
             "vertex_y": coords[:, 1].astype(np.float32)}
    if id_column is not None:
        labels = gdf.index.to_numpy().astype(np.int64) if by_label else np.arange(1, len(gdf) + 1)
        frame["label_id"] = labels[owner]
    return pl.DataFrame(frame)


def read_tables(bundle: Path, generation: Generation) -> tuple[BundleTables, str]:
    """The bundle's elements and the path taken: spatialdata-io where its version branch fits the files."""
    if not generation.reader_ok:
        return read_bundle(bundle), f"bundle files (spatialdata-io would misread it: {generation.reader_issue})"
    try:
        return _read_with_spatialdata_io(bundle), "spatialdata-io"
    except InputError as exc:
        tables = read_bundle(bundle)  # broken data fails here too, with the file named
        return tables, f"bundle files (spatialdata-io failed: {exc.problem})"


def stream_transcripts(src: Path, dst: Path, extent_um: tuple[float, float] | None = None,
                       row_group_rows: int = 1_000_000) -> dict[str, int]:
    """Typed copy of the transcripts with an ``is_control`` flag, streamed (constant memory).

    With ``extent_um`` (the morphology image's width and height in µm), transcripts must lie on it:
    coordinates written in pixels, or from another slide, stop here rather than misplace every cell.
    """
    lf = pl.scan_parquet(src)
    names = lf.collect_schema().names()
    cols = [pl.col(c).cast(t) for c, t in TRANSCRIPT_COLUMNS.items() if c in names]
    is_control = pl.col("feature_name").str.starts_with(CONTROL_PREFIXES[0])
    for p in CONTROL_PREFIXES[1:]:
        is_control = is_control | pl.col("feature_name").str.starts_with(p)
    try:
        lf.select(cols).with_columns(is_control.alias("is_control")).sink_parquet(dst, compression="zstd",
                                                                             row_group_size=row_group_rows)
        stats = (pl.scan_parquet(dst).select(
            pl.len().alias("n"), pl.col("is_control").sum().alias("controls"),
            (pl.col("cell_id") == "UNASSIGNED").sum().alias("unassigned"),
            pl.col("feature_name").filter(~pl.col("is_control")).n_unique().alias("genes"),
            (pl.col("x_location").is_nan() | pl.col("y_location").is_nan() | pl.col("x_location").is_null()
             | pl.col("y_location").is_null()).sum().alias("nan_xy"),
            pl.col("x_location").max().alias("x_max"), pl.col("y_location").max().alias("y_max"),
            pl.min_horizontal(pl.col("x_location").min(), pl.col("y_location").min()).alias("xy_min"),
        ).collect().row(0, named=True))
    except pl.exceptions.PolarsError as exc:
        raise InputError(src, f"cannot stream transcripts ({exc})", "re-copy transcripts.parquet; it may be truncated") from exc
    if stats["nan_xy"]:
        raise InputError(src, f"{stats['nan_xy']} transcript(s) with NaN or missing x/y_location",
                         "re-export the bundle from Xenium Onboard Analysis; a valid transcript always has a position")
    if extent_um is not None and stats["n"]:
        w, h = extent_um
        margin = 0.01 * max(w, h) + 10  # µm: decoded positions may sit a little past the last pixel
        if stats["xy_min"] < -margin or stats["x_max"] > w + margin or stats["y_max"] > h + margin:
            raise InputError(src, f"transcripts lie outside the morphology image (x up to {stats['x_max']:.0f}, "
                             f"y up to {stats['y_max']:.0f}, min {stats['xy_min']:.0f} µm; the image is "
                             f"{w:.0f} x {h:.0f} µm)", "x/y_location must be in µm on this slide's morphology image: "
                             "check they are not pixels, and that the bundle's files come from one run")
    return {k: int(v) for k, v in stats.items() if k in ("n", "controls", "unassigned", "genes")}


def _check_cells(cells: pl.DataFrame, source: Path) -> None:
    """Unique ids and finite centroids: every later join and mask relies on both."""
    dup = cells.filter(pl.col("cell_id").is_duplicated()).get_column("cell_id")
    if len(dup):
        raise InputError(source, f"{dup.n_unique()} duplicate cell id(s) (first: {dup[0]!r})",
                         "re-export the bundle; Xenium cell ids are unique within a run (were two runs merged?)")
    finite = pl.col("x_centroid").is_finite().fill_null(False) & pl.col("y_centroid").is_finite().fill_null(False)
    bad = cells.filter(~finite)  # from pandas, NaN arrives as null
    if len(bad):
        raise InputError(source, f"{len(bad)} cell(s) with NaN or infinite x/y_centroid (first: {bad['cell_id'][0]!r})",
                         "re-export the bundle from Xenium Onboard Analysis; every segmented cell has a centroid")


def ingest_xenium(bundle: str | Path, out_dir: str | Path, cfg: IngestConfig) -> XeniumIngestSummary:
    """Validate, read and persist a Xenium bundle into ``out_dir`` (which the caller makes atomic)."""
    bundle, out_dir = Path(bundle), Path(out_dir)
    dst = XeniumSlideFolder(out_dir)
    info = validate_bundle(bundle, cfg)
    thumbnail_px = cfg.thumbnail_max_px
    generation = detect_generation(bundle, info.specs)
    tables, reader = read_tables(bundle, generation)
    table = tables.table
    if table.n_obs == 0:
        raise InputError(bundle / "cells.parquet", "the slide has zero cells", "check that segmentation ran on this region")
    obs = table.obs.copy()
    obs["x_centroid"], obs["y_centroid"] = table.obsm["spatial"][:, 0], table.obsm["spatial"][:, 1]
    keep = [c for c in obs.columns if c not in ("region",)]
    cells = pl.from_pandas(obs[keep].reset_index(drop=True).astype({"cell_id": str}))
    _check_cells(cells, bundle / "cells.parquet")
    try:
        mask_id, mask_scheme = mask_ints(cells["cell_id"].to_numpy())
    except ValueError as exc:
        raise InputError(bundle / "cells.parquet", str(exc), "rename the slide's cells and export the bundle again") from exc
    cells = cells.with_columns(pl.Series("mask_id", mask_id))
    cells.write_parquet(dst.cells)
    out = table.copy()
    out.obs = out.obs.drop(columns=["region"], errors="ignore")
    out.uns.pop("spatialdata_attrs", None)
    if tables.protein is not None:  # kept apart from the gene counts, scaled back
        x = tables.protein.X
        out.obsm["protein"] = pd.DataFrame(x.toarray() if sparse.issparse(x) else np.asarray(x), index=out.obs_names,
                                           columns=tables.protein.var_names.astype(str))
    out.write_h5ad(dst.expression)
    nuclei = tables.nuclei
    nuclei.write_parquet(dst.nucleus_boundaries)
    tables.cells.write_parquet(dst.cell_boundaries)
    # the DAPI stays in the bundle (a reference, not a copy); its preview comes from a pyramid level
    check_tile_data_present(info.morphology_image)
    preview, morph_levels = first_plane_thumbnail(info.morphology_image, thumbnail_px)
    extent_um = (morph_levels[0][1] * info.pixel_size_um, morph_levels[0][0] * info.pixel_size_um)
    tx = stream_transcripts(bundle / "transcripts.parquet", dst.transcripts, extent_um, cfg.transcript_row_group_rows)
    save_png(preview, dst.thumbnail, max_px=thumbnail_px)
    stat = info.morphology_image.stat()
    summary = XeniumIngestSummary(
        n_cells=int(table.n_obs), n_genes=int(table.n_vars), n_transcripts=tx["n"], n_controls=tx["controls"],
        n_unassigned=tx["unassigned"], n_nuclei=int(nuclei["label_id"].n_unique()), pixel_size_um=info.pixel_size_um,
        analysis_sw_version=info.analysis_sw_version, morphology_levels=[list(s) for s in morph_levels],
        # the referenced image's identity: the output (and its data version) changes when the file does
        morphology_image={"path": str(info.morphology_image.resolve()), "bytes": stat.st_size,
                          "mtime_ns": stat.st_mtime_ns},
        generation=generation.label, reader=reader, n_proteins=0 if tables.protein is None else int(tables.protein.n_vars),
        n_cells_without_nucleus=int(table.n_obs - nuclei["cell_id"].n_unique()),
        n_multinucleate_cells=int((nuclei.group_by("cell_id").agg(pl.col("label_id").n_unique()).get_column("label_id") > 1).sum()),
        layout=generation.to_dict(), mask_id_scheme=mask_scheme,
    )
    dst.summary.write_text(summary.to_json())
    return summary
