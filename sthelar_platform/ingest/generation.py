"""Which Xenium output generation a bundle is, read from its version string *and* its files.

The version string is not enough: Xenium Ranger re-segmentations carry their own version (the
``xenium_ranger`` key overrides ``analysis_sw_version``), and strings such as ``"R&D"`` parse as no
version at all, which spatialdata-io then treats as pre-2.0 and fails on files that are fine. The
layout of ``cells.zarr.zip``, the boundary columns, the transcript columns and the morphology files
say which generation the data really is; when the string and the files disagree, the files win and
ingest reads the bundle's own files instead of the reader (see ``bundle_reader``).
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import polars as pl
import pyarrow.parquet as pq
from packaging.version import InvalidVersion, Version

from sthelar_platform.core.ids import is_xenium_cell_id

# the pattern spatialdata-io 0.7 uses: a string it does not match is "no version" to it
READER_VERSION = re.compile(r"^(?:x|X)enium-(\d+\.\d+\.\d+(\.\d+-\d+)?)")


@dataclass(frozen=True)
class Generation:
    """What a bundle is, and whether spatialdata-io will read it as what it is."""

    version_string: str
    version_key: str              # analysis_sw_version, or xenium_ranger.version for a Ranger re-segmentation
    parsed_version: str | None    # what spatialdata-io makes of the string (None: unparseable)
    layout: str                   # "1.x" (seg_mask_value), "2.x" (polygon_sets), "<1.3" (integer cell ids)
    generation: str               # the XOA generation the files show: 1.x, 2.x, 3.x, 4.x
    ranger: bool
    boundary_label_id: bool
    morphology: str               # single-file | multi-file | per-channel (XOA 4)
    transcript_extras: tuple[str, ...]  # codeword_category / is_gene (XOA 3+)
    protein_features: int
    reader_ok: bool               # spatialdata-io's version branch matches the files
    reader_issue: str = ""        # why it would misread them, when it would

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        """One line for asset metadata, e.g. ``XOA 2.x layout (version 'R&D' unparseable)``."""
        what = f"Xenium Ranger re-segmentation, XOA {self.generation} layout" if self.ranger else \
            f"XOA {self.generation} layout"
        version = f"version {self.version_string!r}" + ("" if self.parsed_version else " unparseable")
        return f"{what} ({version})"


def version_string(specs: dict) -> tuple[str, str]:
    """The version that decides the layout and the key it came from (Ranger's wins)."""
    ranger = specs.get("xenium_ranger")
    if isinstance(ranger, dict) and ranger.get("version"):
        return str(ranger["version"]), "xenium_ranger.version"
    return str(specs.get("analysis_sw_version", "")), "analysis_sw_version"


def parse_reader_version(text: str) -> Version | None:
    """The version spatialdata-io would parse from ``text`` (None where it parses none)."""
    match = READER_VERSION.search(text)
    if match is None:
        return None
    try:
        return Version(match.group(1))
    except InvalidVersion:
        return None


def _zarr_layout(zip_path: Path) -> str:
    with zipfile.ZipFile(zip_path) as z:
        names = z.namelist()
        if any(n.startswith("polygon_sets/") for n in names):
            return "2.x"
        if any(n.startswith("seg_mask_value") for n in names):
            return "1.x"
        meta = next((n for n in names if n in ("cell_id/.zarray", "cell_id/zarr.json")), None)
        if meta is not None:
            shape = json.loads(z.read(meta)).get("shape", [])
            if len(shape) == 2:
                return "1.x"
        return "<1.3"


def _morphology(bundle: Path) -> str:
    focus = bundle / "morphology_focus"
    if focus.is_dir():
        files = [p.name for p in focus.glob("*.ome.tif") if not p.name.startswith("._")]
        if any(re.fullmatch(r"ch\d{4}_.+\.ome\.tif", f) for f in files):
            return "per-channel"
        return "multi-file" if len(files) > 1 else "single-file"
    return "single-file"


def _protein_features(h5: Path) -> int:
    with h5py.File(h5, "r") as f:
        kinds = f["matrix/features/feature_type"][:]
    return int(sum((k.decode() if isinstance(k, bytes) else str(k)) == "Protein Expression" for k in kinds))


def detect_generation(bundle: Path, specs: dict) -> Generation:
    """Read the generation from the files; say whether spatialdata-io's version branch agrees with them."""
    text, key = version_string(specs)
    parsed = parse_reader_version(text)
    layout = _zarr_layout(bundle / "cells.zarr.zip")
    boundary_cols = pq.ParquetFile(bundle / "nucleus_boundaries.parquet").schema_arrow.names
    tx_cols = pq.ParquetFile(bundle / "transcripts.parquet").schema_arrow.names
    extras = tuple(c for c in ("codeword_category", "is_gene") if c in tx_cols)
    morphology = _morphology(bundle)
    protein = _protein_features(bundle / "cell_feature_matrix.h5")
    if layout == "2.x":
        generation = "4.x" if morphology == "per-channel" or protein else "3.x" if extras else "2.x"
    else:
        generation = layout
    # spatialdata-io takes its branch from the string alone: an unparseable string means "< 2.0" to it
    reader_layout = "<1.3" if parsed is None or parsed < Version("1.3.0") else "1.x" if parsed < Version("2.0.0") else "2.x"
    # and it refuses 2.x nucleus boundaries without label_id (early 2.0 builds)
    # and it decodes cells.zarr.zip's cell ids, which say nothing of another segmenter's ids (Baysor, Proseg)
    foreign_ids = not is_xenium_cell_id(pl.read_parquet(bundle / "cells.parquet", columns=["cell_id"], n_rows=1000)
                                        ["cell_id"].cast(pl.String).to_numpy()).all()
    issues = []
    if parsed is None:
        issues.append(f"version string {text!r} is unparseable to it")
    elif reader_layout != layout:
        issues.append(f"version string {text!r} sends it to the {reader_layout} branch, the files are {layout}")
    if layout == "2.x" and "label_id" not in boundary_cols:
        issues.append("2.x nucleus boundaries without label_id")
    if foreign_ids:
        issues.append("cell ids of another segmenter")
    return Generation(version_string=text, version_key=key, parsed_version=None if parsed is None else str(parsed),
                      layout=layout, generation=generation, ranger=key.startswith("xenium_ranger"),
                      boundary_label_id="label_id" in boundary_cols, morphology=morphology,
                      transcript_extras=extras, protein_features=protein, reader_ok=not issues,
                      reader_issue="; ".join(issues))
