"""Validate a Xenium output folder before reading it, with messages that say what to fix."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import pyarrow.parquet as pq

from sthelar_platform.core.config import IngestConfig
from sthelar_platform.core.errors import InputError

REQUIRED_FILES = ("experiment.xenium", "cells.zarr.zip", "cells.parquet", "cell_feature_matrix.h5",
                  "transcripts.parquet", "nucleus_boundaries.parquet", "cell_boundaries.parquet")
# control probes and codewords of every panel generation (BLANK_ / antisense_ in older panels)
CONTROL_PREFIXES = ("NegControlProbe_", "NegControlCodeword_", "UnassignedCodeword_", "DeprecatedCodeword_",
                    "Intergenic", "GenomicControl", "BLANK_", "antisense_")
FIX_EXPORT = "re-copy the file from the instrument's output folder (it may be truncated) or re-run Xenium Ranger"


@dataclass(frozen=True)
class BundleInfo:
    path: Path
    specs: dict
    pixel_size_um: float
    analysis_sw_version: str
    morphology_image: Path
    n_transcripts: int
    n_cells: int


def _parquet_columns(path: Path) -> tuple[list[str], int]:
    try:
        meta = pq.ParquetFile(path).metadata
        return list(meta.schema.to_arrow_schema().names), meta.num_rows
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise InputError(path, f"not a readable parquet file ({type(exc).__name__}: {exc})", FIX_EXPORT) from exc


def _require_columns(path: Path, present: list[str], required: list[str]) -> None:
    missing = [c for c in required if c not in present]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)} (found {', '.join(present)})",
                         "export the file with Xenium Onboard Analysis >= 1.3 or Xenium Ranger; columns are case-sensitive")


def morphology_image_path(bundle: Path) -> Path:
    """The DAPI morphology image of a bundle, in whichever layout its XOA version writes."""
    focus = bundle / "morphology_focus"
    for name in ("morphology_focus_0000.ome.tif", "ch0000_dapi.ome.tif"):
        if (focus / name).exists():
            return focus / name
    if (bundle / "morphology_focus.ome.tif").exists():
        return bundle / "morphology_focus.ome.tif"
    raise InputError(bundle, "no morphology image (morphology_focus/morphology_focus_0000.ome.tif)",
                     "copy the morphology_focus folder from the Xenium output")


def validate_bundle(bundle: str | Path, cfg: IngestConfig) -> BundleInfo:
    """Check files, JSON, parquet schemas, the zarr zip and the HDF5 matrix without loading data."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise InputError(bundle, "Xenium output folder not found", "point xenium_dir at the folder holding experiment.xenium")
    missing = [f for f in REQUIRED_FILES if not (bundle / f).exists()]
    if missing:
        raise InputError(bundle / missing[0], f"required Xenium file missing ({', '.join(missing)})",
                         "copy the complete Xenium output folder (outs/) including this file")
    spec_path = bundle / "experiment.xenium"
    try:
        specs = json.loads(spec_path.read_text())
        pixel_size = float(specs["pixel_size"])
        version = str(specs["analysis_sw_version"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(spec_path, f"not a valid experiment.xenium JSON with pixel_size and analysis_sw_version ({exc})",
                         "restore experiment.xenium from the instrument output") from exc
    if not 0.05 < pixel_size < 5:
        raise InputError(spec_path, f"implausible pixel_size {pixel_size} µm", "Xenium morphology images use 0.2125 µm")
    cols, n_tx = _parquet_columns(bundle / "transcripts.parquet")
    _require_columns(bundle / "transcripts.parquet", cols, cfg.required_transcript_columns)
    cols, n_cells = _parquet_columns(bundle / "cells.parquet")
    _require_columns(bundle / "cells.parquet", cols, cfg.required_cell_columns)
    for name in ("nucleus_boundaries.parquet", "cell_boundaries.parquet"):
        cols, _ = _parquet_columns(bundle / name)
        _require_columns(bundle / name, cols, cfg.required_boundary_columns)
    if not zipfile.is_zipfile(bundle / "cells.zarr.zip"):
        raise InputError(bundle / "cells.zarr.zip", "not a zip archive", FIX_EXPORT)
    try:
        with h5py.File(bundle / "cell_feature_matrix.h5", "r") as f:
            if "matrix" not in f:
                raise InputError(bundle / "cell_feature_matrix.h5", "no /matrix group (not a 10x v3 HDF5)", FIX_EXPORT)
    except OSError as exc:
        raise InputError(bundle / "cell_feature_matrix.h5", f"not a readable HDF5 file ({exc})", FIX_EXPORT) from exc
    if n_cells == 0:
        raise InputError(bundle / "cells.parquet", "the slide has zero cells", "check that segmentation ran on this region")
    return BundleInfo(path=bundle, specs=specs, pixel_size_um=pixel_size, analysis_sw_version=version,
                      morphology_image=morphology_image_path(bundle), n_transcripts=n_tx, n_cells=n_cells)
