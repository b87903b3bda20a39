"""Write a synthetic slide in the exact on-disk layout of a Xenium (XOA v2) output bundle."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
import zarr

from sthelar_platform.core.config import SyntheticConfig
from sthelar_platform.core.ids import encode_cell_ids
from sthelar_platform.synth._layout import N_VERTICES, Cells
from sthelar_platform.synth._render import LabelRenderer

NEG_PROBES = [f"NegControlProbe_{i:05d}" for i in range(1, 21)]
NEG_CODEWORDS = [f"NegControlCodeword_{i:04d}" for i in range(500, 510)]
UNASSIGNED_CODEWORDS = [f"UnassignedCodeword_{i:04d}" for i in range(1, 11)]
CONTROL_TYPES = {**{n: "Negative Control Probe" for n in NEG_PROBES},
                 **{n: "Negative Control Codeword" for n in NEG_CODEWORDS},
                 **{n: "Unassigned Codeword" for n in UNASSIGNED_CODEWORDS}}
CELL_BLOCK = 20000
MASK_CHUNK = 2048


def write_experiment(bundle: Path, cfg: SyntheticConfig, slide_id: str, extent_um: tuple[float, float], n_cells: int, n_tx: int, panel: list[str]) -> None:
    spec = {
        "major_version": 5, "minor_version": 0, "patch_version": 0,
        "run_name": f"SYNTHETIC-{slide_id}", "region_name": slide_id,
        "preservation_method": "ffpe", "num_cells": n_cells, "transcripts_per_cell": round(n_tx / max(n_cells, 1)),
        "transcripts_per_100um": None, "cassette_name": "SYNTHETIC", "slide_id": "SYNTHETIC-0000000",
        "panel_design_id": "synthetic", "panel_name": "STHELAR synthetic marker panel",
        "panel_organism": "Human", "panel_num_targets_predesigned": len(panel), "panel_num_targets_custom": 0,
        "pixel_size": cfg.morphology_pixel_size_um, "instrument_sn": "SYNTHETIC",
        "instrument_sw_version": "3.0.0.0", "analysis_sw_version": cfg.analysis_sw_version,
        "experiment_uuid": f"synthetic-{slide_id}", "images": {"morphology_focus_filepath": "morphology_focus/morphology_focus_0000.ome.tif"},
        "synthetic": True, "extent_um": list(extent_um),
    }
    (bundle / "experiment.xenium").write_text(json.dumps(spec, indent=2))


def _polygon_table(verts: np.ndarray, cell_ids: np.ndarray, label_ids: np.ndarray) -> pa.Table:
    closed = np.concatenate([verts, verts[:, :1]], axis=1)  # closed rings
    nv = closed.shape[1]
    return pa.table({
        "cell_id": pa.array(np.repeat(cell_ids, nv)),
        "vertex_x": pa.array(closed[..., 0].ravel().astype(np.float32)),
        "vertex_y": pa.array(closed[..., 1].ravel().astype(np.float32)),
        "label_id": pa.array(np.repeat(label_ids, nv).astype(np.uint32)),
    })


def write_boundaries(bundle: Path, cells: Cells, cell_ids: np.ndarray) -> np.ndarray:
    """Write cell and nucleus boundary parquet files; return nucleus owner rows (polygon_sets/0)."""
    n = len(cells)
    pq.write_table(_polygon_table(cells.polygons("cell"), cell_ids, np.arange(1, n + 1)), bundle / "cell_boundaries.parquet")
    owners = np.flatnonzero(cells.has_nucleus)
    pq.write_table(_polygon_table(cells.polygons("nucleus")[owners], cell_ids[owners], np.arange(1, len(owners) + 1)),
                   bundle / "nucleus_boundaries.parquet")
    return owners


def _polygon_area(verts: np.ndarray) -> np.ndarray:
    x, y = verts[..., 0], verts[..., 1]
    return 0.5 * np.abs((x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y).sum(1))


def _sample_positions(cells: Cells, cell_rows: np.ndarray, nuclear: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points strictly inside the nucleus (nuclear) or the cytoplasm ring of each cell."""
    m = len(cell_rows)
    t = rng.uniform(0, 2 * np.pi, m)
    k = (t / (2 * np.pi / N_VERTICES)).astype(np.int64) % N_VERTICES
    k2 = (k + 1) % N_VERTICES
    nr, cr = cells.nuc_radii[cell_rows], cells.cell_radii[cell_rows]
    inner = np.minimum(nr[np.arange(m), k], nr[np.arange(m), k2]) * 0.95
    ring_lo = np.maximum(nr[np.arange(m), k], nr[np.arange(m), k2]) * 1.05
    ring_hi = np.minimum(cr[np.arange(m), k], cr[np.arange(m), k2]) * 0.95
    has_ring = ring_hi > ring_lo + 0.05
    nuclear = (nuclear & (inner > 0)) | ~has_ring
    nuclear &= inner > 0
    u = rng.random(m)
    rho = np.where(nuclear, np.sqrt(u) * inner, ring_lo + u * np.clip(ring_hi - ring_lo, 0, None))
    return cells.x[cell_rows] + rho * np.cos(t), cells.y[cell_rows] + rho * np.sin(t), nuclear


def write_transcripts_and_matrix(bundle: Path, cells: Cells, cell_ids: np.ndarray, counts: sp.csr_matrix, panel: list[str],
                                 cfg: SyntheticConfig, tissue_xy: tuple[np.ndarray, np.ndarray],
                                 rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    """Stream transcripts per block of cells; the h5 matrix counts transcripts with qv >= 20, as XOA does."""
    features = list(panel) + list(CONTROL_TYPES)
    fidx_controls = np.arange(len(panel), len(features))
    n = len(cells)
    schema = pa.schema([("transcript_id", pa.uint64()), ("cell_id", pa.string()), ("overlaps_nucleus", pa.uint8()),
                        ("feature_name", pa.string()), ("x_location", pa.float32()), ("y_location", pa.float32()),
                        ("z_location", pa.float32()), ("qv", pa.float32()), ("fov_name", pa.string()),
                        ("nucleus_distance", pa.float32()), ("codeword_index", pa.int32())])
    feat_arr = np.array(features, dtype=object)
    control_counts = np.zeros((n, len(fidx_controls)), np.int32)
    next_id = 281474976710656  # XOA-like large ids
    n_rows = 0
    stats = {"assigned": 0, "unassigned": 0, "controls": 0, "low_qv": 0}
    with pq.ParquetWriter(bundle / "transcripts.parquet", schema, compression="zstd") as writer:
        for start in range(0, n, CELL_BLOCK):
            rows = np.arange(start, min(start + CELL_BLOCK, n))
            block = counts[start : start + CELL_BLOCK].tocoo()
            cr, gi, reps = block.row, block.col, block.data
            cell_rows = np.repeat(rows[cr], reps)
            genes = np.repeat(gi, reps)
            # low-quality duplicates (qv < 20): present in transcripts, absent from the matrix
            n_low = rng.binomial(len(cell_rows), cfg.low_qv_fraction)
            low_pick = rng.integers(0, max(len(cell_rows), 1), n_low) if len(cell_rows) else np.zeros(0, np.int64)
            n_ctrl = rng.binomial(len(cell_rows), cfg.negative_control_fraction)
            ctrl_cells = rows[rng.integers(0, len(rows), n_ctrl)]
            ctrl_feat = rng.choice(fidx_controls, n_ctrl)
            all_cells = np.concatenate([cell_rows, cell_rows[low_pick], ctrl_cells])
            all_genes = np.concatenate([genes, genes[low_pick], ctrl_feat])
            qv = np.concatenate([rng.uniform(20, 40, len(cell_rows)), rng.uniform(5, 19.9, n_low), rng.uniform(20, 40, n_ctrl)])
            nuclear_pref = rng.random(len(all_cells)) < cfg.nuclear_fraction
            x, y, nuclear = _sample_positions(cells, all_cells, nuclear_pref, rng)
            np.add.at(control_counts, (ctrl_cells, ctrl_feat - len(panel)), 1)
            m = len(all_cells)
            writer.write_table(pa.table({
                "transcript_id": pa.array(np.arange(next_id, next_id + m, dtype=np.uint64)),
                "cell_id": pa.array(cell_ids[all_cells]),
                "overlaps_nucleus": pa.array(nuclear.astype(np.uint8)),
                "feature_name": pa.array(feat_arr[all_genes]),
                "x_location": pa.array(x.astype(np.float32)), "y_location": pa.array(y.astype(np.float32)),
                "z_location": pa.array(rng.uniform(8, 20, m).astype(np.float32)),
                "qv": pa.array(qv.astype(np.float32)),
                "fov_name": pa.array(np.char.add("A", ((cells.y[all_cells] // 400).astype(int) + 1).astype("U"))),
                "nucleus_distance": pa.array(np.where(nuclear, 0.0, rng.uniform(0.1, 5, m)).astype(np.float32)),
                "codeword_index": pa.array(all_genes.astype(np.int32)),
            }, schema=schema))
            next_id += m
            n_rows += m
            stats["assigned"] += len(cell_rows) + n_low
            stats["controls"] += n_ctrl
            stats["low_qv"] += n_low
        # unassigned transcripts scattered over the tissue, outside any cell assignment
        n_un = int(cfg.unassigned_fraction * counts.sum())
        tx, ty = tissue_xy
        for s in range(0, n_un, 1_000_000):
            m = min(1_000_000, n_un - s)
            pick = rng.integers(0, len(tx), m)
            g = rng.integers(0, len(panel), m)
            writer.write_table(pa.table({
                "transcript_id": pa.array(np.arange(next_id, next_id + m, dtype=np.uint64)),
                "cell_id": pa.array(np.full(m, "UNASSIGNED", dtype=object)),
                "overlaps_nucleus": pa.array(np.zeros(m, np.uint8)),
                "feature_name": pa.array(feat_arr[g]),
                "x_location": pa.array((tx[pick] + rng.uniform(-2, 2, m)).astype(np.float32)),
                "y_location": pa.array((ty[pick] + rng.uniform(-2, 2, m)).astype(np.float32)),
                "z_location": pa.array(rng.uniform(8, 20, m).astype(np.float32)),
                "qv": pa.array(rng.uniform(20, 40, m).astype(np.float32)),
                "fov_name": pa.array(np.full(m, "A1", dtype=object)),
                "nucleus_distance": pa.array(rng.uniform(5, 30, m).astype(np.float32)),
                "codeword_index": pa.array(g.astype(np.int32)),
            }, schema=schema))
            next_id += m
            n_rows += m
        stats["unassigned"] = n_un
    stats["total"] = n_rows
    _write_h5(bundle / "cell_feature_matrix.h5", cell_ids, features, sp.hstack([counts, sp.csr_matrix(control_counts)]))
    return stats, control_counts


def _write_h5(path: Path, barcodes: np.ndarray, features: list[str], matrix: sp.sparray | sp.spmatrix) -> None:
    csr = sp.csr_matrix(matrix)  # cells x features == CSC of features x cells, as 10x v3 stores it
    ftypes = [CONTROL_TYPES.get(f, "Gene Expression") for f in features]
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        g.create_dataset("data", data=csr.data.astype(np.int32), compression="gzip")
        g.create_dataset("indices", data=csr.indices.astype(np.int64), compression="gzip")
        g.create_dataset("indptr", data=csr.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array([len(features), len(barcodes)], dtype=np.int32))
        ft = g.create_group("features")
        ft.create_dataset("id", data=np.array([f"SYN{i:05d}" for i in range(len(features))], dtype="S"))
        ft.create_dataset("name", data=np.array(features, dtype="S"))
        ft.create_dataset("feature_type", data=np.array(ftypes, dtype="S"))
        ft.create_dataset("genome", data=np.array(["Unknown"] * len(features), dtype="S"))
        ft.create_dataset("_all_tag_keys", data=np.array(["genome"], dtype="S"))
        f.attrs["software_version"] = "xenium-2.0.0.10 (synthetic)"
        f.attrs["format"] = "10x v3 feature-barcode matrix"


def write_cells_tables(bundle: Path, cells: Cells, cell_ids: np.ndarray, prefixes: np.ndarray, counts: sp.csr_matrix,
                       tx_stats_per_cell: dict[str, np.ndarray], nucleus_owners: np.ndarray, morph_px_um: float,
                       morph_shape: tuple[int, int]) -> None:
    """cells.parquet and cells.zarr.zip (cell ids, summary, label masks, polygon sets)."""
    cell_area = _polygon_area(cells.polygons("cell"))
    nuc_area = np.where(cells.has_nucleus, _polygon_area(cells.polygons("nucleus")), 0.0)
    total = np.asarray(counts.sum(1)).ravel()
    pq.write_table(pa.table({
        "cell_id": pa.array(cell_ids),
        "x_centroid": pa.array(cells.x), "y_centroid": pa.array(cells.y),
        "transcript_counts": pa.array(total.astype(np.uint32)),
        "control_probe_counts": pa.array(tx_stats_per_cell["control_probe_counts"].astype(np.uint32)),
        "control_codeword_counts": pa.array(tx_stats_per_cell["control_codeword_counts"].astype(np.uint32)),
        "unassigned_codeword_counts": pa.array(tx_stats_per_cell["unassigned_codeword_counts"].astype(np.uint32)),
        "deprecated_codeword_counts": pa.array(np.zeros(len(cells), np.uint32)),
        "total_counts": pa.array((total + tx_stats_per_cell["control_probe_counts"]).astype(np.uint32)),
        "cell_area": pa.array(cell_area), "nucleus_area": pa.array(nuc_area),
        "nucleus_count": pa.array(cells.has_nucleus.astype(np.uint32)),
        "segmentation_method": pa.array(np.full(len(cells), "Segmented by nucleus expansion of 5.0µm", dtype=object)),
    }), bundle / "cells.parquet", compression="zstd")

    staging = bundle / "cells.zarr.staging"
    root = zarr.group(store=zarr.storage.LocalStore(staging), zarr_format=2)
    root.attrs.update({"major_version": 6, "minor_version": 0, "number_cells": len(cells), "synthetic": True})
    root.create_array("cell_id", data=np.column_stack([prefixes, np.ones(len(cells), np.uint32)]).astype(np.uint32))
    summary = np.column_stack([cells.x, cells.y, cell_area, cells.x, cells.y, nuc_area,
                               np.zeros(len(cells)), cells.has_nucleus.astype(float)])
    cs = root.create_array("cell_summary", data=summary.astype(np.float64))
    cs.attrs["column_names"] = ["cell_centroid_x", "cell_centroid_y", "cell_area", "nucleus_centroid_x",
                                "nucleus_centroid_y", "nucleus_area", "z_level", "nucleus_count"]
    masks = root.create_group("masks")
    ps = root.create_group("polygon_sets")
    for key, verts, owners in (("0", cells.polygons("nucleus")[nucleus_owners], nucleus_owners),
                               ("1", cells.polygons("cell"), np.arange(len(cells)))):
        arr = masks.create_array(key, shape=morph_shape, chunks=(MASK_CHUNK, MASK_CHUNK), dtype=np.uint32, fill_value=0)
        render = LabelRenderer(verts, morph_px_um)
        for y in range(0, morph_shape[0], MASK_CHUNK):
            for x in range(0, morph_shape[1], MASK_CHUNK):
                h, w = min(MASK_CHUNK, morph_shape[0] - y), min(MASK_CHUNK, morph_shape[1] - x)
                tile = render(y, x, h, w)
                if tile.any():
                    arr[y : y + h, x : x + w] = tile
        grp = ps.create_group(key)
        grp.create_array("cell_index", data=owners.astype(np.uint32))
        grp.attrs["name"] = "nucleus" if key == "0" else "cell"
    _zip_store(staging, bundle / "cells.zarr.zip")


def _zip_store(folder: Path, zip_path: Path) -> None:
    """Zip a zarr folder once (a ZipStore cannot rewrite metadata without duplicate entries)."""
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    shutil.rmtree(folder)


def control_counts_per_cell(matrix_controls: np.ndarray) -> dict[str, np.ndarray]:
    n_p, n_c = len(NEG_PROBES), len(NEG_CODEWORDS)
    return {"control_probe_counts": matrix_controls[:, :n_p].sum(1),
            "control_codeword_counts": matrix_controls[:, n_p : n_p + n_c].sum(1),
            "unassigned_codeword_counts": matrix_controls[:, n_p + n_c :].sum(1)}


def make_cell_ids(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Increasing, sparse uint32 prefixes (like XOA's) and their string ids."""
    steps = rng.integers(1, 40, n).astype(np.int64)
    prefixes = (np.cumsum(steps) + 1_000_000).astype(np.uint32)
    return prefixes, encode_cell_ids(prefixes, 1)
