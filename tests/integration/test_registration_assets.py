"""Registration assets in real Dagster: QC in metadata and lineage, the blocking check stops only
the bad slide's downstream, and the registered H&E opens as a SpatialData element."""

import json
import shutil
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
from dagster import AssetCheckKey, AssetKey, DagsterInstance, materialize

import sthelar_definitions
from sthelar_platform.core.config import load_categories, load_synthetic
from sthelar_platform.core.imaging import read_level, write_pyramidal_ome_tiff
from sthelar_platform.core.lineage import LineageStore
from sthelar_platform.ingest.manifest import SlideCatalog, load_manifest
from sthelar_platform.registration import transform as reg
from sthelar_platform.synth import synthesize_slide

PIPELINE = [a for a in sthelar_definitions.ALL_ASSETS if a.key.to_user_string() in
            ("xenium_slide", "he_image", "he_registration", "registered_he")]


def _he_at_10x_labelled_40x(src, dst):
    """The same H&E scanned at 10x (4x larger pixels) but written with the 40x pixel size."""
    img = read_level(src, 0)[::4, ::4]
    write_pyramidal_ome_tiff(dst, img.shape[:2], lambda lv, y, x, h, w: img[::2**lv, ::2**lv][y:y + h, x:x + w],
                             dtype=np.uint8, channels=3, pixel_size_um=0.2738)


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_cohort):
    tmp = tmp_path_factory.mktemp("reg_home")
    landing = tmp / "landing"
    shutil.copytree(tiny_cohort, landing)
    tiny = load_manifest(landing / "manifest.yaml")[0]
    other = synthesize_slide(tmp / "other", "other", "skin", "tiny", 5, load_synthetic(), load_categories())
    x10 = tmp / "x10_he.ome.tif"
    _he_at_10x_labelled_40x(tiny.he_image, x10)
    x10_csv = tmp / "x10_alignment.csv"  # right for the 10x pixels: 4x the scale the 40x pixel size implies
    np.savetxt(x10_csv, reg.read_alignment_csv(tiny.alignment_csv) @ np.diag([4.0, 4.0, 1.0]), delimiter=",")
    specs = [tiny,
             # the H&E of another slide, no CSV: nothing matches, the check must block this slide
             replace(tiny, slide_id="mismatch", he_image=other.he_image, alignment_csv=None),
             # right H&E, another slide's alignment CSV: refined CSV fails, automatic estimate replaces it
             replace(tiny, slide_id="wrongcsv", alignment_csv=other.alignment_csv),
             # a 10x image passed as 40x, no CSV
             replace(tiny, slide_id="x10", he_image=x10, alignment_csv=None),
             # a 10x image passed as 40x with its (correct 10x) CSV: the CSV scale contradicts the pixel size
             replace(tiny, slide_id="x10csv", he_image=x10, alignment_csv=x10_csv)]
    home = tmp / "home"
    SlideCatalog(home / "catalog.yaml").add(specs)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("slides", [s.slide_id for s in specs])
    results = {s.slide_id: materialize(PIPELINE, partition_key=s.slide_id, instance=instance,
                                       resources=sthelar_definitions.build_resources(str(home)),
                                       raise_on_error=False)
               for s in specs}
    return home, results, instance


def _materialized(result):
    return {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}


def _check(result, name):
    evals = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    return next(e for e in evals if e.check_name == name)


def test_good_slide_registers_and_passes_its_check(home):
    home_dir, results, _ = home
    res = results["tiny"]
    assert res.success and _materialized(res) == {"xenium_slide", "he_image", "he_registration", "registered_he"}
    check = _check(res, "registration_quality")
    assert check.passed and check.metadata["median_residual_um"].value <= 2.0
    md = next(m for m in res.get_asset_materialization_events()
              if m.asset_key == AssetKey("he_registration")).materialization.metadata
    assert md["source"].value == "refined" and md["matched_fraction"].value > 0.9
    assert "data:image/png;base64" in md["overlay"].value and "data:image/png;base64" in md["residual_map"].value
    assert len(md["residual_grid_um"].value) == 4 and md["magnification"].value == "40x"
    rows = LineageStore(home_dir / "lineage.duckdb").query(
        "SELECT slide_id, source, passed, transform, matched_fraction FROM registration_qc WHERE slide_id = ?", ["tiny"])
    assert len(rows) == 1 and rows[0]["passed"] and rows[0]["source"] == "refined"
    # the lineage transform is H&E px -> Xenium µm (DESIGN.md)
    out = home_dir / "warehouse" / "he_registration" / "tiny"
    m_px = np.loadtxt(out / "transform.csv", delimiter=",")
    assert np.allclose(np.array(json.loads(rows[0]["transform"]))[:2], np.diag([0.2125, 0.2125, 1])[:2] @ m_px)


def test_registered_he_is_a_spatialdata_image_in_xenium_coordinates(home, tiny_slide):
    from spatialdata.transformations import get_transformation

    from sthelar_platform.registration import open_registered_he

    home_dir, _, _ = home
    folder = home_dir / "warehouse" / "registered_he" / "tiny"
    sdata = open_registered_he(folder)
    assert set(sdata.images) == {"he"} and set(sdata.shapes) == {"nucleus_boundaries"}
    # one stored H&E: the registered folder holds a hard link of it and no image chunks
    he = home_dir / "warehouse" / "he_image" / "tiny" / "he_image.ome.tif"
    assert (folder / "he_image.ome.tif").stat().st_ino == he.stat().st_ino
    assert not (folder / "sdata.zarr" / "images").exists()
    affine = get_transformation(sdata.images["he"], "global").to_affine_matrix(("x", "y"), ("x", "y"))
    truth = np.array(json.loads((tiny_slide / "truth" / "transform.json").read_text())["he_to_morphology"])
    cells = pl.read_parquet(tiny_slide / "truth" / "cells.parquet")
    he_px = reg.apply(np.linalg.inv(truth), cells.select("x_um", "y_um").to_numpy() / 0.2125)
    assert np.median(reg.transform_error_um(affine, truth, he_px, 0.2125)) <= 0.5
    # shapes and image share 'global': a nucleus's µm centroid maps to morphology px
    scale = get_transformation(sdata.shapes["nucleus_boundaries"], "global").to_affine_matrix(("x", "y"), ("x", "y"))
    assert np.isclose(scale[0, 0], 1 / 0.2125) and len(sdata.shapes["nucleus_boundaries"]) > 200
    level0 = sdata.images["he"]["scale0"]["image"]
    assert level0.shape[0] == 3 and level0.dtype == np.uint8


def test_failing_check_blocks_only_that_slides_downstream(home):
    home_dir, results, _ = home
    bad = results["mismatch"]
    assert _materialized(bad) == {"xenium_slide", "he_image", "he_registration"}  # registered_he never ran
    check = _check(bad, "registration_quality")
    assert not check.passed and check.severity.value == "ERROR" and "matched" in check.description
    assert not (home_dir / "warehouse" / "registered_he" / "mismatch").exists()
    assert (home_dir / "warehouse" / "registered_he" / "tiny" / "sdata.zarr").exists()
    rows = LineageStore(home_dir / "lineage.duckdb").query(
        "SELECT passed, failures FROM registration_qc WHERE slide_id = 'mismatch'")
    assert rows and not rows[0]["passed"] and "matched" in rows[0]["failures"]


def test_csv_of_another_slide_is_replaced_by_the_automatic_estimate_with_a_warning(home):
    home_dir, results, _ = home
    res = results["wrongcsv"]
    assert res.success and "registered_he" in _materialized(res)
    warn = _check(res, "alignment_csv_agreement")
    assert not warn.passed and warn.severity.value == "WARN" and "automatic" in warn.description
    assert _check(res, "registration_quality").passed
    r = json.loads((home_dir / "warehouse" / "he_registration" / "wrongcsv" / "registration.json").read_text())
    assert r["qc"]["source"] == "automatic" and r["csv_matched_fraction"] < 0.5 and "did not fit" in r["notes"][0]


def test_he_at_10x_passed_as_40x_is_blocked(home):
    home_dir, results, _ = home
    res = results["x10"]
    assert "registered_he" not in _materialized(res)
    check = _check(res, "registration_quality")
    assert not check.passed and "magnification" in check.description


def test_10x_he_with_its_csv_fails_with_a_clear_error(home):
    _, results, _ = home
    res = results["x10csv"]
    failure = next(e for e in res.all_events if e.event_type_value == "STEP_FAILURE")
    msg = str(failure.event_specific_data.error)
    assert "far from the pixel-size ratio" in msg and "Fix:" in msg and failure.step_key == "he_registration"
    assert "registered_he" not in _materialized(res)


def test_checks_are_recorded_per_partition(home):
    _, _, instance = home
    key = AssetCheckKey(AssetKey("he_registration"), "registration_quality")
    records = instance.event_log_storage.get_asset_check_execution_history(key, limit=10)
    assert len(records) >= 4
