"""Rewrite a synthetic XOA 2.0 bundle into the on-disk layout of another Xenium generation.

The generator writes one canonical bundle; a flavour then changes exactly what that generation
changes (facts: shared/FORMATS.md, spatialdata-io's reader, 10x's documentation):

- ``1.9``: ``cells.zarr.zip`` with ``seg_mask_value`` instead of ``polygon_sets`` and a 7-column
  ``cell_summary``; boundaries without ``label_id``; a single ``morphology_focus.ome.tif`` plus
  ``morphology_mip.ome.tif`` at the bundle root;
- ``2.0``: the canonical bundle (``polygon_sets``, ``label_id``, cells without a nucleus) with the
  four-file ``morphology_focus/morphology_focus_000{0..3}.ome.tif`` (the OME-XML of file 0 describes
  all four channels; files 1-3 point to it) and cells with two nuclei (separate polygons, own
  ``label_id``, ``nucleus_count`` 2; the ``masks/0`` raster is left as generated);
- ``3.1``: transcripts gain ``codeword_category`` and ``is_gene``; ``cell_feature_matrix.zarr.zip``
  beside the ``.h5``;
- ``4.0``: the 3.x changes plus ``morphology_focus/chNNNN_<name>.ome.tif`` (one file per channel,
  ``ch0000_dapi.ome.tif`` first), a z-stack ``morphology.ome.tif`` and a protein panel in the matrix
  (``feature_type: Protein Expression``, intensities stored fixed-point with the file attribute
  ``protein_scaling_factor``);
- ``ranger``: a Xenium Ranger re-segmentation of an XOA 1.6 run: ``experiment.xenium`` keeps
  ``analysis_sw_version: xenium-1.6.0.7`` and gains ``xenium_ranger.version``, the files are 2.x.

Quirks that any flavour can carry: ``rnd`` (``analysis_sw_version: "R&D"``), ``bytes`` (transcript
``feature_name`` stored as binary), ``blank`` (``BLANK_`` and ``antisense_`` control probes in the
transcripts and the matrix), ``macos`` (``._*`` AppleDouble files beside the morphology images),
``foreign_ids`` (a Baysor / Proseg re-segmentation: cell ids ``cell-<n>`` in the tables, polygons and
transcripts, which no Xenium id decodes).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zarr

from sthelar_platform.synth.flavours import FLAVOURS, QUIRKS

VERSIONS = {"1.9": "xenium-1.9.0.2", "2.0": "xenium-2.0.0.10", "3.1": "xenium-3.1.0.4", "4.0": "xenium-4.0.0.9",
            "ranger": "xenium-1.6.0.7"}
PROTEINS = ("CD45", "PanCK", "Vimentin", "HLA-DR", "CD20")
PROTEIN_SCALING_FACTOR = 1000.0
CHANNELS = ("dapi", "atp1a1_cd45_e-cadherin", "18s", "alphasma_vimentin")
RANGER_VERSION = "xenium-3.0.1.1"
BLANKS = [f"BLANK_{i:04d}" for i in range(1, 6)] + [f"antisense_{g}" for g in ("PTPRC", "EPCAM", "COL1A1")]


def apply_flavour(bundle: Path, flavour: str | None, quirks: tuple[str, ...], rng: np.random.Generator) -> None:
    """Turn the canonical bundle in ``bundle`` into ``flavour`` (None: keep its layout) with ``quirks``,
    in place, before the slide folder is published.
    """
    if flavour is not None and flavour not in FLAVOURS:
        raise ValueError(f"unknown XOA flavour {flavour!r}; known: {', '.join(FLAVOURS)}")
    bad = set(quirks) - set(QUIRKS)
    if bad:
        raise ValueError(f"unknown quirks {sorted(bad)}; known: {', '.join(QUIRKS)}")
    spec = json.loads((bundle / "experiment.xenium").read_text())
    if flavour is not None:
        spec["analysis_sw_version"] = VERSIONS[flavour]
    if flavour == "2.0":
        _multifile_morphology(bundle, spec)
        _multinucleate(bundle, rng)
    if flavour == "1.9":
        _to_1x(bundle, spec)
    if flavour in ("3.1", "4.0"):
        _to_3x(bundle)
    if flavour == "4.0":
        _to_4x(bundle, spec, rng)
    if flavour == "ranger":
        spec["xenium_ranger"] = {"version": RANGER_VERSION, "command": "resegment", "synthetic": True}
    if "rnd" in quirks:
        spec["analysis_sw_version"] = "R&D"
        spec.pop("xenium_ranger", None)
    if "blank" in quirks:
        _add_blank_probes(bundle, rng)
    if "bytes" in quirks:
        _rewrite_parquet(bundle / "transcripts.parquet",
                         lambda t: t.set_column(t.schema.get_field_index("feature_name"), "feature_name",
                                                pc.cast(t["feature_name"], pa.binary())))
    if "foreign_ids" in quirks:
        _foreign_cell_ids(bundle)
    if "macos" in quirks:
        for image in list(bundle.rglob("*.ome.tif")):
            (image.parent / f"._{image.name}").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    spec["synthetic_flavour"] = {"xoa": flavour, "quirks": list(quirks)}
    (bundle / "experiment.xenium").write_text(json.dumps(spec, indent=2))


def _rewrite_parquet(path: Path, change) -> None:
    table = change(pq.read_table(path))
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)


def _rewrite_zarr_zip(path: Path, change) -> None:
    staging = path.with_suffix(".staging")
    with zipfile.ZipFile(path) as z:
        z.extractall(staging)
    change(staging)
    tmp = path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for p in sorted(staging.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(staging).as_posix())
    shutil.rmtree(staging)
    tmp.replace(path)


def _array(group: zarr.Group, path: str) -> zarr.Array:
    node = group[path]
    if not isinstance(node, zarr.Array):
        raise ValueError(f"cells.zarr.zip: {path} is not an array")
    return node


def _column_names(group: zarr.Group) -> list:
    names = _array(group, "cell_summary").attrs["column_names"]
    if not isinstance(names, list):
        raise ValueError("cells.zarr.zip: cell_summary has no column_names list")
    return names


def _to_1x(bundle: Path, spec: dict) -> None:
    def to_seg_mask_value(root: Path) -> None:
        group = zarr.open_group(zarr.storage.LocalStore(root), mode="r+", zarr_format=2)
        n = _array(group, "cell_id").shape[0]
        # 1.x: cell i's label in both masks is seg_mask_value[i] (nuclei by expansion: one nucleus per cell)
        group.create_array("seg_mask_value", data=np.arange(1, n + 1, dtype=np.uint32))
        summary = np.asarray(_array(group, "cell_summary")[:])
        names = [str(c) for c in _column_names(group)]
        keep = [i for i, c in enumerate(names) if c != "nucleus_count"]
        del group["cell_summary"]
        cs = group.create_array("cell_summary", data=summary[:, keep])
        cs.attrs["column_names"] = [names[i] for i in keep]
        del group["polygon_sets"]
        group.attrs.update({"major_version": 4, "minor_version": 0})

    _rewrite_zarr_zip(bundle / "cells.zarr.zip", to_seg_mask_value)
    for name in ("nucleus_boundaries.parquet", "cell_boundaries.parquet"):
        _rewrite_parquet(bundle / name, lambda t: t.drop_columns(["label_id"]))
    _rewrite_parquet(bundle / "cells.parquet", lambda t: t.drop_columns(
        [c for c in ("nucleus_count", "segmentation_method") if c in t.column_names]))
    focus = bundle / "morphology_focus"
    shutil.move(focus / "morphology_focus_0000.ome.tif", bundle / "morphology_focus.ome.tif")
    shutil.rmtree(focus)
    shutil.copyfile(bundle / "morphology_focus.ome.tif", bundle / "morphology_mip.ome.tif")
    spec["images"] = {"morphology_filepath": "morphology.ome.tif", "morphology_mip_filepath": "morphology_mip.ome.tif",
                      "morphology_focus_filepath": "morphology_focus.ome.tif"}


def _to_3x(bundle: Path) -> None:
    def add_columns(t: pa.Table) -> pa.Table:
        names = t["feature_name"].to_numpy(zero_copy_only=False).astype(str)
        category = np.where(np.char.startswith(names, "NegControlProbe_"), "negative_control_probe",
                            np.where(np.char.startswith(names, "NegControlCodeword_"), "negative_control_codeword",
                                     np.where(np.char.startswith(names, "UnassignedCodeword_"), "unassigned_codeword",
                                              "predesigned_gene")))
        t = t.append_column("codeword_category", pa.array(category.astype(object)))
        return t.append_column("is_gene", pa.array(category == "predesigned_gene"))

    _rewrite_parquet(bundle / "transcripts.parquet", add_columns)
    _write_matrix_zarr(bundle)


def _write_matrix_zarr(bundle: Path) -> None:
    """``cell_feature_matrix.zarr.zip``: the same counts as the .h5, as XOA 3 ships beside it."""
    staging = bundle / "cell_feature_matrix.staging"
    with h5py.File(bundle / "cell_feature_matrix.h5", "r") as f:
        root = zarr.group(store=zarr.storage.LocalStore(staging), zarr_format=2)
        cf = root.create_group("cell_features")
        for key in ("data", "indices", "indptr", "shape"):
            cf.create_array(key, data=f["matrix"][key][:])
        cf.attrs.update({"number_cells": int(f["matrix/shape"][1]), "number_features": int(f["matrix/shape"][0]),
                         "feature_keys": f["matrix/features/name"][:].astype(str).tolist(),
                         "feature_types": f["matrix/features/feature_type"][:].astype(str).tolist()})
    with zipfile.ZipFile(bundle / "cell_feature_matrix.zarr.zip", "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(staging.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(staging).as_posix())
    shutil.rmtree(staging)


def _add_blank_probes(bundle: Path, rng: np.random.Generator) -> None:
    """A few BLANK_ / antisense_ control transcripts, and their (empty) matrix columns, as older panels have."""
    def add_rows(t: pa.Table) -> pa.Table:
        pick = rng.integers(0, t.num_rows, min(50, t.num_rows))
        extra = t.take(pa.array(pick))
        names = pa.array(rng.choice(BLANKS, len(pick)).astype(object), type=t.schema.field("feature_name").type)
        extra = extra.set_column(extra.schema.get_field_index("feature_name"), "feature_name", names)
        ids = pc.add(extra["transcript_id"], pa.scalar(10**15, pa.uint64()))
        extra = extra.set_column(extra.schema.get_field_index("transcript_id"), "transcript_id", ids)
        return pa.concat_tables([t, extra])

    _rewrite_parquet(bundle / "transcripts.parquet", add_rows)
    h5 = bundle / "cell_feature_matrix.h5"
    with h5py.File(h5, "r+") as f:
        m = f["matrix"]
        n_feat, n_cells = (int(v) for v in m["shape"][:])
        m["shape"][0] = n_feat + len(BLANKS)  # new feature rows hold no counts: indptr runs over cells
        ft = m["features"]
        for key, values in (("id", [f"BLANK{i}" for i in range(len(BLANKS))]), ("name", BLANKS),
                            ("feature_type", ["Negative Control Codeword" if b.startswith("BLANK") else
                                              "Negative Control Probe" for b in BLANKS]),
                            ("genome", ["Unknown"] * len(BLANKS))):
            old = ft[key][:]
            del ft[key]
            ft.create_dataset(key, data=np.concatenate([old, np.array(values, dtype="S")]).astype("S"))


def protein_intensities(n_cells: int, rng: np.random.Generator) -> np.ndarray:
    """Per-cell protein intensities (cells x PROTEINS), what the ingest must read back after unscaling."""
    return np.round(rng.gamma(2.0, 3.0, (n_cells, len(PROTEINS))), 3)


def _to_4x(bundle: Path, spec: dict, rng: np.random.Generator) -> None:
    import tifffile

    focus = bundle / "morphology_focus"
    dapi = focus / "morphology_focus_0000.ome.tif"
    (focus / f"ch0000_{CHANNELS[0]}.ome.tif").write_bytes(dapi.read_bytes())
    with tifffile.TiffFile(dapi) as tif:
        level0 = tif.series[0].levels[0].asarray()
    for k, name in enumerate(CHANNELS[1:], start=1):  # the stain channels: a rescaled copy is enough for readers
        tifffile.imwrite(focus / f"ch{k:04d}_{name}.ome.tif", (level0 // (k + 1)).astype(np.uint16), ome=True,
                         metadata={"axes": "YX", "Channel": {"Name": [name]}}, tile=(256, 256), compression="zlib")
    dapi.unlink()
    # the 3-D stack XOA 4 writes beside the focus images (ZYX)
    tifffile.imwrite(bundle / "morphology.ome.tif", np.stack([level0, level0 // 2]), ome=True,
                     metadata={"axes": "ZYX"}, tile=(256, 256), compression="zlib")
    spec["images"] = {"morphology_filepath": "morphology.ome.tif",
                      "morphology_focus_filepath": f"morphology_focus/ch0000_{CHANNELS[0]}.ome.tif"}
    _add_protein_panel(bundle / "cell_feature_matrix.h5", rng)


def _add_protein_panel(h5: Path, rng: np.random.Generator) -> None:
    """Protein features appended to the matrix, fixed-point scaled, with the file's scaling factor."""
    import scipy.sparse as sp

    with h5py.File(h5, "r+") as f:
        m = f["matrix"]
        n_feat, n_cells = (int(v) for v in m["shape"][:])
        x = sp.csc_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=(n_feat, n_cells)).T.tocsr()
        values = protein_intensities(n_cells, rng)
        barcodes = m["barcodes"][:].astype(str)
        truth = h5.parent.parent / "truth"
        if truth.is_dir():  # what ingest must read back once the scaling is divided out
            pq.write_table(pa.table({"cell_id": barcodes, **{p: values[:, i] for i, p in enumerate(PROTEINS)}}),
                           truth / "protein.parquet")
        stored = np.round(values * PROTEIN_SCALING_FACTOR).astype(np.int64)
        x = sp.hstack([x, sp.csr_matrix(stored)]).tocsr()
        for key in ("data", "indices", "indptr", "shape"):
            del m[key]
        m.create_dataset("data", data=x.data.astype(np.int32), compression="gzip")
        m.create_dataset("indices", data=x.indices.astype(np.int64), compression="gzip")
        m.create_dataset("indptr", data=x.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array([x.shape[1], n_cells], dtype=np.int32))
        ft = m["features"]
        extra = {"id": [f"PROT{i}" for i in range(len(PROTEINS))], "name": list(PROTEINS),
                 "feature_type": ["Protein Expression"] * len(PROTEINS), "genome": ["Unknown"] * len(PROTEINS)}
        for key, values_ in extra.items():
            old = ft[key][:]
            del ft[key]
            ft.create_dataset(key, data=np.concatenate([old, np.array(values_, dtype="S")]).astype("S"))
        f.attrs["protein_scaling_factor"] = PROTEIN_SCALING_FACTOR


MORPHOLOGY_CHANNELS = ("DAPI", "ATP1A1/CD45/E-Cadherin", "18S", "AlphaSMA/Vimentin")


def _ome_xml(uuids: list[str], shape: tuple[int, int], px_um: float) -> str:
    channels = "".join(f'<Channel ID="Channel:0:{k}" Name="{name}" SamplesPerPixel="1"/>'
                       for k, name in enumerate(MORPHOLOGY_CHANNELS))
    tiffdata = "".join(f'<TiffData FirstC="{k}" FirstT="0" FirstZ="0" IFD="0" PlaneCount="1">'
                       f'<UUID FileName="morphology_focus_{k:04d}.ome.tif">urn:uuid:{u}</UUID></TiffData>'
                       for k, u in enumerate(uuids))
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" '
            f'UUID="urn:uuid:{uuids[0]}" Creator="SYNTHETIC (sthelar_platform.synth)">'
            '<Image ID="Image:0" Name="morphology_focus">'
            f'<Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint16" SizeX="{shape[1]}" SizeY="{shape[0]}" '
            f'SizeZ="1" SizeC="{len(MORPHOLOGY_CHANNELS)}" SizeT="1" PhysicalSizeX="{px_um}" '
            f'PhysicalSizeY="{px_um}" PhysicalSizeXUnit="&#181;m" PhysicalSizeYUnit="&#181;m">'
            f"{channels}{tiffdata}</Pixels></Image></OME>")


def _binary_only_xml(uuid: str, meta_uuid: str) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            f'<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="urn:uuid:{uuid}">'
            f'<BinaryOnly MetadataFile="morphology_focus_0000.ome.tif" UUID="urn:uuid:{meta_uuid}"/></OME>')


def _multifile_morphology(bundle: Path, spec: dict) -> None:
    """XOA 2's four morphology files, one channel each, the channel list in file 0's OME-XML."""
    import uuid

    import tifffile

    focus = bundle / "morphology_focus"
    src = focus / "morphology_focus_0000.ome.tif"
    with tifffile.TiffFile(src) as tif:
        levels = [lv.asarray() for lv in tif.series[0].levels]
    px_um = float(spec["pixel_size"])
    uuids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"{spec.get('experiment_uuid', 'synthetic')}/morphology/{k}"))
             for k in range(len(MORPHOLOGY_CHANNELS))]
    tmp = focus / "staging"
    tmp.mkdir()
    for k in range(len(MORPHOLOGY_CHANNELS)):
        xml = _ome_xml(uuids, levels[0].shape, px_um) if k == 0 else _binary_only_xml(uuids[k], uuids[0])
        with tifffile.TiffWriter(tmp / f"morphology_focus_{k:04d}.ome.tif", bigtiff=True, ome=False) as tif:
            for i, lv in enumerate(levels):
                data = (lv // (k + 1)).astype(np.uint16)  # the stain channels: dimmer copies are enough here
                res = 1e4 / (px_um * 2**i)
                tif.write(data, tile=(256, 256), compression="zlib", photometric="minisblack", metadata=None,
                          description=xml if i == 0 else None, subifds=len(levels) - 1 if i == 0 else None,
                          subfiletype=0 if i == 0 else 1, resolution=(res, res), resolutionunit="CENTIMETER")
    for f in tmp.iterdir():
        f.replace(focus / f.name)
    tmp.rmdir()


def _multinucleate(bundle: Path, rng: np.random.Generator, fraction: float = 0.03) -> None:
    """Give a few cells two nuclei: their nucleus split into two smaller polygons, each with its own label."""
    nuclei = pq.read_table(bundle / "nucleus_boundaries.parquet").to_pandas()
    owners = nuclei["cell_id"].drop_duplicates().to_numpy()
    picked = set(rng.choice(owners, max(3, int(len(owners) * fraction)), replace=False).tolist())
    next_label = int(nuclei["label_id"].max()) + 1
    parts, added = [], []
    for (cell, label), ring in nuclei.groupby(["cell_id", "label_id"], sort=False):
        if cell not in picked:
            parts.append(ring)
            continue
        xy = ring[["vertex_x", "vertex_y"]].to_numpy(np.float64)[:-1]  # drop the closing vertex
        c = xy.mean(0)
        far = xy[np.argmax(((xy - c) ** 2).sum(1))] - c
        for sign, lab in ((1, label), (-1, next_label)):
            half = c + 0.45 * (xy - c) + sign * 0.5 * far  # disjoint: projections on `far` do not meet
            closed = np.vstack([half, half[:1]])
            parts.append(pd.DataFrame({"cell_id": cell, "vertex_x": closed[:, 0].astype(np.float32),
                                       "vertex_y": closed[:, 1].astype(np.float32), "label_id": np.uint32(lab)}))
        added.append((cell, next_label))
        next_label += 1
    table = pa.Table.from_pandas(pd.concat(parts, ignore_index=True), preserve_index=False)
    pq.write_table(table.cast(pa.schema([("cell_id", pa.string()), ("vertex_x", pa.float32()),
                                         ("vertex_y", pa.float32()), ("label_id", pa.uint32())])),
                   bundle / "nucleus_boundaries.parquet")
    cells = pq.read_table(bundle / "cells.parquet")
    ids = cells["cell_id"].to_numpy(zero_copy_only=False).astype(str)
    row = {c: i for i, c in enumerate(ids)}
    count = np.asarray(cells["nucleus_count"].to_numpy(), np.uint32).copy()
    count[[row[c] for c, _ in added]] = 2
    _rewrite_parquet(bundle / "cells.parquet", lambda t: t.set_column(
        t.schema.get_field_index("nucleus_count"), "nucleus_count", pa.array(count)))

    def add_owners(root: Path) -> None:
        group = zarr.open_group(zarr.storage.LocalStore(root), mode="r+", zarr_format=2)
        index = np.asarray(_array(group, "polygon_sets/0/cell_index")[:])
        del group["polygon_sets/0/cell_index"]
        polygons = group["polygon_sets/0"]
        if not isinstance(polygons, zarr.Group):
            raise ValueError("cells.zarr.zip: polygon_sets/0 is not a group")
        polygons.create_array("cell_index", data=np.r_[index, [row[c] for c, _ in added]].astype(np.uint32))
        cells_summary = _array(group, "cell_summary")
        summary = np.asarray(cells_summary[:])
        names = [str(c) for c in _column_names(group)]
        summary[:, names.index("nucleus_count")] = count
        cells_summary[:] = summary

    _rewrite_zarr_zip(bundle / "cells.zarr.zip", add_owners)


def _foreign_cell_ids(bundle: Path) -> None:
    """Cell ids as another segmenter writes them (``cell-1`` ...), consistently in every table."""
    cells = pq.read_table(bundle / "cells.parquet")
    old = cells["cell_id"].to_numpy(zero_copy_only=False).astype(str)
    new = np.array([f"cell-{i + 1}" for i in range(len(old))], dtype=object)
    mapping = dict(zip(old.tolist(), new.tolist(), strict=True))

    def rename(t: pa.Table) -> pa.Table:
        ids = t["cell_id"].to_numpy(zero_copy_only=False).astype(str)
        renamed = np.array([mapping.get(c, c) for c in ids], dtype=object)  # UNASSIGNED stays
        return t.set_column(t.schema.get_field_index("cell_id"), "cell_id", pa.array(renamed))

    for name in ("cells.parquet", "nucleus_boundaries.parquet", "cell_boundaries.parquet", "transcripts.parquet"):
        _rewrite_parquet(bundle / name, rename)
    with h5py.File(bundle / "cell_feature_matrix.h5", "r+") as f:
        barcodes = f["matrix/barcodes"][:].astype(str)
        del f["matrix/barcodes"]
        f["matrix"].create_dataset("barcodes", data=np.array([mapping[b] for b in barcodes], dtype="S"))
