"""The SYNTHETIC bundle is a faithful Xenium bundle and its truth is consistent."""

import json
import warnings

import anndata as ad
import numpy as np
import polars as pl
import pytest
import shapely
import tifffile

from sthelar_platform.core.config import load_categories, load_synthetic
from sthelar_platform.core.hashing import sha256_file
from sthelar_platform.core.imaging import open_pyramid, read_level


def test_real_reader_reads_bundle_with_defaults_and_no_mismatch_warning(tiny_slide):
    from spatialdata_io import xenium

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        sdata = xenium(tiny_slide / "xenium")
    table = sdata["table"]
    truth = pl.read_parquet(tiny_slide / "truth" / "cells.parquet")
    assert table.n_obs == truth.height > 200
    assert set(sdata.images) == {"morphology_focus"} and set(sdata.labels) == {"cell_labels", "nucleus_labels"}
    assert len(sdata["cell_boundaries"]) == table.n_obs
    assert len(sdata["nucleus_boundaries"]) == int(truth["has_nucleus"].sum())
    assert "EPCAM" in table.var_names and "NegControlProbe_00001" not in table.var_names  # gex_only
    # raster labels agree with polygons: the label under each nucleus centroid is its own polygon
    labels = np.asarray(sdata["nucleus_labels"]["scale0"]["image"])
    nuc = sdata["nucleus_boundaries"]
    c = shapely.centroid(nuc.geometry.values)
    px = (shapely.get_coordinates(c) / 0.2125).astype(int)
    assert (labels[px[:, 1], px[:, 0]] == nuc.index.to_numpy()).mean() > 0.98


def test_matrix_equals_transcripts_with_qv20(tiny_slide):
    from spatialdata_io import xenium

    table = xenium(tiny_slide / "xenium", transcripts=False)["table"]
    tx = pl.read_parquet(tiny_slide / "xenium" / "transcripts.parquet")
    counted = (tx.filter((pl.col("qv") >= 20) & (pl.col("cell_id") != "UNASSIGNED") & ~pl.col("feature_name").str.starts_with("Neg")
                         & ~pl.col("feature_name").str.starts_with("Unassigned"))
               .group_by("cell_id").len())
    per_cell = dict(zip(table.obs_names, np.asarray(table.X.sum(1)).ravel(), strict=True))
    assert all(per_cell[c] == n for c, n in counted.iter_rows())
    assert (tx["cell_id"] == "UNASSIGNED").sum() > 0 and (tx["qv"] < 20).sum() > 0
    assert tx["feature_name"].str.starts_with("NegControlProbe_").sum() > 0
    assert set(tx.columns) >= {"transcript_id", "cell_id", "overlaps_nucleus", "feature_name", "x_location", "y_location", "z_location", "qv"}


def test_nuclear_transcripts_lie_in_their_nucleus(tiny_slide):
    tx = pl.read_parquet(tiny_slide / "xenium" / "transcripts.parquet").filter(pl.col("cell_id") != "UNASSIGNED").head(3000)
    nb = pl.read_parquet(tiny_slide / "xenium" / "nucleus_boundaries.parquet")
    cb = pl.read_parquet(tiny_slide / "xenium" / "cell_boundaries.parquet")

    def polys(df):
        return {cid: shapely.Polygon(g.select("vertex_x", "vertex_y").to_numpy()) for (cid,), g in df.group_by("cell_id")}

    nuc, cell = polys(nb), polys(cb)
    pts = shapely.points(tx["x_location"].to_numpy(), tx["y_location"].to_numpy())
    in_nuc = np.array([cid in nuc and nuc[cid].contains(p) for cid, p in zip(tx["cell_id"], pts, strict=True)])
    in_cell = np.array([cell[cid].contains(p) for cid, p in zip(tx["cell_id"], pts, strict=True)])
    flag = tx["overlaps_nucleus"].to_numpy() == 1
    assert in_cell.mean() > 0.99
    assert (in_nuc == flag).mean() > 0.99
    # nuclei sit inside their cells
    assert all(cell[c].buffer(1e-3).contains(nuc[c]) for c in list(nuc)[:200])


def test_he_pyramid_alignment_csv_and_truth(tiny_slide):
    he = tiny_slide / "he" / "tiny_he_image.ome.tif"
    info = open_pyramid(he)
    assert len(info.level_shapes) >= 2 and info.level_shapes[0][2] == 3 and abs(info.pixel_size_um - 0.2738) < 1e-6
    with tifffile.TiffFile(he) as tf:
        assert tf.pages.first.is_tiled and tf.is_ome
    csv = np.loadtxt(tiny_slide / "he" / "tiny_he_imagealignment.csv", delimiter=",")
    truth = json.loads((tiny_slide / "truth" / "transform.json").read_text())
    np.testing.assert_allclose(csv, np.array(truth["he_to_morphology"]), rtol=1e-9, atol=1e-6)
    assert not (tiny_slide / "xenium" / "truth").exists()
    # nuclei are hematoxylin-dark exactly where the true transform puts them
    cells = pl.read_parquet(tiny_slide / "truth" / "cells.parquet").filter(pl.col("has_nucleus"))
    inv = np.linalg.inv(csv)
    morph = np.column_stack([cells["x_um"] / 0.2125, cells["y_um"] / 0.2125, np.ones(cells.height)])
    hx, hy = (morph @ inv.T)[:, :2].T
    img = read_level(he, 0)
    at_nuclei = img[hy.astype(int), hx.astype(int)].mean(1)
    rng = np.random.default_rng(0)
    random_px = img[rng.integers(0, img.shape[0], 2000), rng.integers(0, img.shape[1], 2000)].mean(1)
    assert at_nuclei.mean() < 120 < np.median(random_px)


def test_lazy_window_read_matches_full_level(tiny_slide):
    from sthelar_platform.core.imaging import read_level_region

    he = tiny_slide / "he" / "tiny_he_image.ome.tif"
    full = read_level(he, 0)
    np.testing.assert_array_equal(read_level_region(he, 0, 300, 500, 256, 300), full[300:556, 500:800])


def test_dapi_is_bright_at_nuclei(tiny_slide):
    dapi = tiny_slide / "xenium" / "morphology_focus" / "morphology_focus_0000.ome.tif"
    img = read_level(dapi, 0)
    assert img.dtype == np.uint16
    cells = pl.read_parquet(tiny_slide / "truth" / "cells.parquet").filter(pl.col("has_nucleus"))
    vals = img[(cells["y_um"] / 0.2125).cast(int).to_numpy(), (cells["x_um"] / 0.2125).cast(int).to_numpy()]
    assert np.median(vals) > 10 * np.median(img)


def test_truth_and_reference_atlas(tiny_cohort, tiny_slide):
    truth = pl.read_parquet(tiny_slide / "truth" / "cells.parquet")
    assert set(truth.columns) >= {"cell_id", "category", "detailed_class", "grouped_class"}
    less10 = truth.filter(pl.col("n_transcripts") <= 10)
    assert less10.height > 0 and (less10["category"] == "Less10").all()
    assert truth["true_category"].n_unique() >= 5
    ref = ad.read_h5ad(tiny_cohort / "references" / "breast.h5ad")
    assert np.issubdtype(ref.X.dtype, np.integer) and ref.X.min() >= 0
    assert "cell_type" in ref.obs and ref.n_vars > 116
    assert {"EPCAM", "PTPRC", "COL1A1"} <= set(ref.var_names)


def test_generation_is_deterministic(tmp_path):
    from sthelar_platform.synth import synthesize_slide

    a = synthesize_slide(tmp_path / "a", "d1", "skin", "tiny", 3, load_synthetic(), load_categories())
    b = synthesize_slide(tmp_path / "b", "d1", "skin", "tiny", 3, load_synthetic(), load_categories())
    for rel in ("xenium/transcripts.parquet", "xenium/cells.parquet", "he/d1_he_imagealignment.csv"):
        assert sha256_file(a.folder / rel) == sha256_file(b.folder / rel)
    assert np.array_equal(read_level(a.he_image, 1), read_level(b.he_image, 1))


@pytest.mark.parametrize("tissue", ["skin", "brain"])
def test_other_tissues_have_their_categories(tmp_path, tissue):
    from sthelar_platform.synth import synthesize_slide

    s = synthesize_slide(tmp_path, f"t_{tissue}", tissue, "tiny", 1, load_synthetic(), load_categories())
    cats = set(pl.read_parquet(s.truth_dir / "cells.parquet")["true_category"])
    assert {"skin": "Melanocyte", "brain": "Glioblastoma"}[tissue] in cats


def test_panel_counts_do_not_depend_on_the_block_size(monkeypatch):
    from sthelar_platform.synth import _expression

    programs = _expression.build_programs(load_synthetic())
    labels = np.array(programs.labels)[np.arange(500) % len(programs.labels)]
    less10 = np.arange(500) % 37 == 0

    def draw():
        return _expression.sample_panel_counts(programs, labels, 120, less10, np.random.default_rng(4))
    whole = draw()
    monkeypatch.setattr(_expression, "CELL_BLOCK", 7)
    blocked = draw()
    assert whole.shape == (500, programs.n_panel) and (whole != blocked).nnz == 0
    assert np.asarray(whole[less10].sum(1)).max() < 30 < np.median(np.asarray(whole[~less10].sum(1)))


def test_a_prime_5k_like_panel_pads_markers_with_sparse_filler_genes(tmp_path):
    from spatialdata_io import xenium

    from sthelar_platform.core.config import SyntheticConfig
    from sthelar_platform.synth import synthesize_reference, synthesize_slide

    base = load_synthetic().model_dump()
    base["sizes"]["tiny"] = {**base["sizes"]["tiny"], "panel_genes": 600}
    cfg = SyntheticConfig.model_validate(base)
    s = synthesize_slide(tmp_path, "p5k", "breast", "tiny", 0, cfg, load_categories())
    table = xenium(s.xenium_dir, transcripts=False, cells_boundaries=False, nucleus_boundaries=False,
                   cells_labels=False, nucleus_labels=False, morphology_focus=False)["table"]
    assert table.n_vars == 600 and {"EPCAM", "PTPRC", "P5KF00001"} <= set(table.var_names)
    fillers = table[:, table.var_names.str.startswith("P5KF")].X
    detected = np.asarray((fillers > 0).mean(0)).ravel()
    # most filler genes are seen in few cells, a few in many: a whole-transcriptome-like spread
    assert np.median(detected) < 0.05 and detected.max() > 0.2
    truth = pl.read_parquet(s.truth_dir / "cells.parquet")
    assert np.array_equal(np.asarray(table.X.sum(1)).ravel().astype(int), truth["n_transcripts"].to_numpy())
    atlas = ad.read_h5ad(synthesize_reference(tmp_path / "ref.h5ad", "breast", 300, 0, cfg, 600))
    assert set(table.var_names) <= set(atlas.var_names)
