"""Bundles in the layouts of several Xenium generations ingest to the same slide as the canonical one."""

import json

import anndata as ad
import numpy as np
import polars as pl
import pytest

from sthelar_platform.core.config import load_categories, load_config, load_synthetic
from sthelar_platform.core.errors import InputError
from sthelar_platform.ingest.bundle_reader import read_bundle
from sthelar_platform.ingest.generation import detect_generation, parse_reader_version
from sthelar_platform.ingest.xenium import ingest_xenium
from sthelar_platform.synth import synthesize_slide

INGEST = load_config("pipeline").ingest
CASES = {  # flavour (None: the canonical bundle), quirks -> (generation the files show, reader path)
    (None, ()): ("2.x", "spatialdata-io"),
    ("1.9", ()): ("1.x", "spatialdata-io"),
    ("3.1", ()): ("3.x", "spatialdata-io"),
    ("ranger", ()): ("2.x", "spatialdata-io"),
    (None, ("rnd",)): ("2.x", "bundle files"),
    ("1.9", ("rnd", "bytes", "blank", "macos")): ("1.x", "bundle files"),
    ("3.1", ("bytes", "blank", "macos")): ("3.x", "spatialdata-io"),
    ("4.0", ()): ("4.x", "spatialdata-io"),
    ("3.1", ("foreign_ids",)): ("3.x", "bundle files"),
}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("generations")
    out = {}
    for xoa, quirks in CASES:
        name = f"{xoa or 'canonical'}-{'-'.join(quirks) or 'plain'}"
        out[(xoa, quirks)] = synthesize_slide(root / name, "gen", "breast", "tiny", 0, load_synthetic(),
                                              load_categories(), xoa=xoa, quirks=quirks).xenium_dir
    return out


@pytest.fixture(scope="module")
def ingested(bundles, tmp_path_factory):
    root = tmp_path_factory.mktemp("ingested")
    out = {}
    for case, bundle in bundles.items():
        target = root / f"{case[0] or 'canonical'}-{'-'.join(case[1]) or 'plain'}"
        target.mkdir()
        out[case] = (ingest_xenium(bundle, target, INGEST), target)
    return out


@pytest.mark.parametrize("case", list(CASES), ids=lambda c: f"{c[0] or 'canonical'}{'+' + '+'.join(c[1]) if c[1] else ''}")
def test_every_generation_ingests_to_the_same_slide(ingested, case):
    summary, out = ingested[case]
    generation, reader = CASES[case]
    assert f"XOA {generation} layout" in summary.generation
    assert summary.reader.startswith(reader), summary.reader
    ref_summary, ref = ingested[(None, ())]
    assert summary.n_cells == ref_summary.n_cells and summary.n_genes == ref_summary.n_genes
    a, b = ad.read_h5ad(ref / "expression.h5ad"), ad.read_h5ad(out / "expression.h5ad")
    cells_a, cells_b = pl.read_parquet(ref / "cells.parquet"), pl.read_parquet(out / "cells.parquet")
    foreign = "foreign_ids" in case[1]
    if foreign:  # another segmenter's ids: hashed mask integers, stored beside the ids
        assert summary.mask_id_scheme == "hashed" and cells_b["mask_id"].is_unique().all()
        assert cells_b["cell_id"].str.starts_with("cell-").all() and (cells_b["mask_id"] > 2**32).all()
        rename = dict(zip(cells_a["cell_id"].to_list(), cells_b["cell_id"].to_list(), strict=True))
        back = {v: k for k, v in rename.items()}
        b.obs_names = [back[n] for n in b.obs_names]
    else:
        assert summary.mask_id_scheme == "xenium"
        assert cells_a["mask_id"].to_list() == cells_b["mask_id"].to_list()
    assert list(a.obs_names) == list(b.obs_names) and list(a.var_names) == list(b.var_names)
    assert abs(a.X - b.X).sum() == 0
    assert np.allclose(a.obsm["spatial"], b.obsm["spatial"])
    for name in ("nucleus_boundaries.parquet", "cell_boundaries.parquet"):
        va = pl.read_parquet(ref / name).sort("cell_id", maintain_order=True)
        vb = pl.read_parquet(out / name)
        if foreign:
            vb = vb.with_columns(pl.col("cell_id").replace(back))
        vb = vb.sort("cell_id", maintain_order=True)
        assert va.select("cell_id", "vertex_x", "vertex_y").equals(vb.select("cell_id", "vertex_x", "vertex_y")), name
    nuclei = pl.read_parquet(out / "nucleus_boundaries.parquet")
    assert nuclei["label_id"].n_unique() == summary.n_nuclei == ref_summary.n_nuclei
    if "blank" in case[1]:
        assert summary.n_controls > ref_summary.n_controls  # BLANK_ / antisense_ count as controls
        tx = pl.read_parquet(out / "transcripts.parquet")
        assert tx.filter(pl.col("feature_name").str.starts_with("BLANK_"))["is_control"].all()
    else:
        assert summary.n_controls == ref_summary.n_controls
    assert summary.n_transcripts - summary.n_controls == ref_summary.n_transcripts - ref_summary.n_controls


def test_unparseable_version_is_detected_from_the_files(bundles):
    bundle = bundles[(None, ("rnd",))]
    spec = json.loads((bundle / "experiment.xenium").read_text())
    assert spec["analysis_sw_version"] == "R&D" and parse_reader_version("R&D") is None
    gen = detect_generation(bundle, spec)
    assert gen.layout == "2.x" and not gen.reader_ok and "unparseable" in gen.label


def test_ranger_version_overrides_the_analysis_version(bundles):
    bundle = bundles[("ranger", ())]
    spec = json.loads((bundle / "experiment.xenium").read_text())
    gen = detect_generation(bundle, spec)
    assert spec["analysis_sw_version"].startswith("xenium-1.6")  # alone it would send the reader to the 1.x branch
    assert gen.ranger and gen.version_key == "xenium_ranger.version" and gen.reader_ok


def test_1x_layout_has_no_polygon_sets_and_no_label_ids(bundles):
    import zipfile

    bundle = bundles[("1.9", ())]
    names = zipfile.ZipFile(bundle / "cells.zarr.zip").namelist()
    assert any(n.startswith("seg_mask_value") for n in names) and not any(n.startswith("polygon_sets") for n in names)
    assert "label_id" not in pl.read_parquet_schema(bundle / "nucleus_boundaries.parquet")
    assert (bundle / "morphology_focus.ome.tif").exists() and (bundle / "morphology_mip.ome.tif").exists()


def test_direct_reader_still_names_broken_files(bundles, tmp_path):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(bundles[(None, ("rnd",))], bundle)
    (bundle / "cell_feature_matrix.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="cell_feature_matrix.h5"):
        read_bundle(bundle)


@pytest.mark.parametrize("quirks", [(), ("rnd",)], ids=["reader", "bundle-files"])
def test_xoa4_protein_panel_is_kept_apart_and_scaled_back(tmp_path, quirks):
    slide = synthesize_slide(tmp_path / "x4", "x4", "breast", "tiny", 0, load_synthetic(), load_categories(), xoa="4.0",
                             quirks=quirks)
    bundle = slide.xenium_dir
    assert (bundle / "morphology_focus" / "ch0000_dapi.ome.tif").exists() and (bundle / "morphology.ome.tif").exists()
    assert not list((bundle / "morphology_focus").glob("morphology_focus_*"))
    out = tmp_path / "out"
    out.mkdir()
    summary = ingest_xenium(bundle, out, INGEST)
    assert "XOA 4.x" in summary.generation and summary.n_proteins == 5
    assert summary.reader.startswith("bundle files" if quirks else "spatialdata-io")
    table = ad.read_h5ad(out / "expression.h5ad")
    assert (table.var["feature_types"] == "Gene Expression").all()  # genes only in X
    assert set(table.obsm["protein"].columns) == {"CD45", "PanCK", "Vimentin", "HLA-DR", "CD20"}
    truth = pl.read_parquet(slide.truth_dir / "protein.parquet").to_pandas().set_index("cell_id")
    protein = table.obsm["protein"].loc[truth.index]
    assert np.allclose(protein.to_numpy(), truth[protein.columns].to_numpy(), atol=1e-3)


def test_xoa2_multifile_morphology_and_two_nucleus_cells(tmp_path):
    import shapely
    import tifffile

    from sthelar_platform.registration.registered_he import nucleus_shapes
    from sthelar_platform.registration.slide import nucleus_centroids_um

    slide = synthesize_slide(tmp_path / "x2", "x2", "breast", "tiny", 0, load_synthetic(), load_categories(), xoa="2.0")
    bundle = slide.xenium_dir
    files = sorted((bundle / "morphology_focus").glob("morphology_focus_000*.ome.tif"))
    assert [f.name for f in files] == [f"morphology_focus_000{k}.ome.tif" for k in range(4)]
    with tifffile.TiffFile(files[0]) as tif:  # file 0's OME-XML describes all four channels, across the files
        series = tif.series[0]
        assert tif.is_ome and series.shape[0] == 4 and series.axes.startswith("C")
    out = tmp_path / "out"
    out.mkdir()
    summary = ingest_xenium(bundle, out, INGEST)
    assert "XOA 2.x" in summary.generation and summary.n_multinucleate_cells >= 3
    assert summary.morphology_levels[0] == list(files and tifffile.TiffFile(files[0], is_ome=False).series[0].shape)
    assert not (out / "morphology_focus.ome.tif").exists()  # referenced, not copied
    nuclei = pl.read_parquet(out / "nucleus_boundaries.parquet")
    per_cell = nuclei.group_by("cell_id").agg(pl.col("label_id").n_unique().alias("n"))
    assert per_cell.filter(pl.col("n") == 2).height == summary.n_multinucleate_cells
    cells = pl.read_parquet(out / "cells.parquet")
    two = set(per_cell.filter(pl.col("n") == 2)["cell_id"])
    assert set(cells.filter(pl.col("nucleus_count") == 2)["cell_id"]) == two
    # registration sees each nucleus, SpatialData shapes keep them apart and valid
    assert len(nucleus_centroids_um(out / "nucleus_boundaries.parquet")) == nuclei["label_id"].n_unique()
    shapes = nucleus_shapes(out / "nucleus_boundaries.parquet", 0.2125)
    assert shapes.index.is_unique and shapes.geometry.is_valid.all()
    multi = shapes.loc[sorted(two)].geometry
    assert all(isinstance(g, shapely.MultiPolygon) and len(g.geoms) == 2 for g in multi)
