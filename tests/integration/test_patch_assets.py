"""Patches, masks, reference segmentation, agreement QC and exports in real Dagster on tiny SYNTHETIC slides."""

import shutil
from dataclasses import replace

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, DagsterInstance, materialize
from dataset_readers import read_cellvit_folds, read_fork

import sthelar_definitions
from sthelar_platform.core.config import load_categories, load_synthetic
from sthelar_platform.core.hashing import sha256_tree
from sthelar_platform.core.ids import cell_ids_to_mask_ints
from sthelar_platform.core.imaging import read_level_region
from sthelar_platform.core.lineage import LineageStore
from sthelar_platform.ingest.manifest import SlideCatalog, load_manifest
from sthelar_platform.synth import synthesize_slide
from sthelar_platform.tiling.patches import load_labels

pytestmark = pytest.mark.slow  # the whole slide pipeline and the training dataset
ALL = sthelar_definitions.ALL_ASSETS


def _run(home, instance, slide, assets=ALL):
    return materialize(assets, partition_key=slide, instance=instance,
                       resources=sthelar_definitions.build_resources(str(home)), raise_on_error=False)


def _materialized(result):
    return {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}


@pytest.fixture(scope="module")
def tiled(tmp_path_factory, tiny_cohort):
    tmp = tmp_path_factory.mktemp("patch_home")
    landing = tmp / "landing"
    shutil.copytree(tiny_cohort, landing)
    tiny = load_manifest(landing / "manifest.yaml")[0]
    other = synthesize_slide(tmp / "other", "other", "skin", "tiny", 5, load_synthetic(), load_categories())
    specs = [tiny, replace(tiny, slide_id="mismatch", he_image=other.he_image, alignment_csv=None)]
    home = tmp / "home"
    SlideCatalog(home / "catalog.yaml").add(specs)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("slides", [s.slide_id for s in specs])
    results = {s.slide_id: _run(home, instance, s.slide_id) for s in specs}
    return home, landing, instance, results


def test_whole_pipeline_runs_and_patch_quality_passes(tiled):
    home, _, _, results = tiled
    r = results["tiny"]
    assert r.success
    assert {"patches_40x", "patches_20x", "reference_segmentation", "segmentation_agreement", "slide_export"} <= _materialized(r)
    check = next(e.event_specific_data for e in r.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
                 and e.event_specific_data.check_name == "patch_quality")
    assert check.passed and check.metadata["median_jaccard_40x"].value > 0.6
    md = next(m for m in r.get_asset_materialization_events() if m.asset_key == AssetKey("patches_40x"))
    meta = md.materialization.metadata
    assert meta["dagster/row_count"].value > 0 and meta["overview"].value.startswith("![patches](data:image/png")


def test_failed_registration_stops_tiling_for_that_slide_only(tiled):
    home, _, instance, results = tiled
    assert not ({"patches_40x", "patches_20x", "slide_export"} & _materialized(results["mismatch"]))
    assert not (home / "warehouse" / "patches_40x" / "mismatch").exists()
    # selected alone, the asset refuses with the reason instead of tiling a misaligned slide
    alone = _run(home, instance, "mismatch", [a for a in sthelar_definitions.ALL_ASSETS
                                              if a.key == AssetKey("patches_40x")])
    assert not alone.success
    failure = next(e for e in alone.all_events if e.event_type_value == "STEP_FAILURE")
    assert "registration failed its quality thresholds" in str(failure.event_specific_data.error)


def test_patches_are_full_size_with_nuclei_and_stable_ids(tiled):
    home, _, _, _ = tiled
    for mag in ("40x", "20x"):
        d = home / "warehouse" / f"patches_{mag}" / "tiny"
        table = pd.read_parquet(d / "patches.parquet")
        assert len(table) > 0 and (table["n_nuclei"] >= 1).all() and table["patch_id"].is_unique
        assert table["patch_id"].str.fullmatch(rf"{mag}_x\d{{6}}_y\d{{6}}").all()
        assert ((table["x0"] % 192) == 0).all() and ((table["y0"] % 192) == 0).all()
        for name in table["name"].head(5):
            assert cv2.imread(str(d / "images" / f"{name}.png")).shape == (256, 256, 3)


def test_export_round_trips_instances_types_and_cell_ids(tiled):
    home, _, _, _ = tiled
    cats = load_categories()
    labels = pd.read_parquet(home / "exports" / "tiny" / "cell_labels.parquet")
    by_int = dict(zip(cell_ids_to_mask_ints(labels["cell_id"].to_numpy()), labels["category"], strict=True))
    he = home / "warehouse" / "he_image" / "tiny" / "he_image.ome.tif"
    for mag, level in (("40x", 0), ("20x", 1)):
        src = home / "warehouse" / f"patches_{mag}" / "tiny"
        for grouping, g in cats.groupings.items():
            d = home / "exports" / "tiny" / "cellvit" / mag / grouping
            counts = pd.read_csv(d / "cell_count.csv").set_index("Image")
            assert list(counts.columns) == list(g.classes)
            types = pd.read_csv(d / "types.csv")
            assert set(types["type"]) == {"breast"} and len(types) == len(counts)
            for image in counts.index[:8]:
                name = image.removesuffix(".png")
                rgb = cv2.imread(str(d / "images" / image))[..., ::-1]
                lab = load_labels(d / "labels" / f"{name}.npz")
                assert set(lab) == {"inst_map", "type_map", "cell_id_map"} and lab["inst_map"].dtype == np.int32
                x0, y0 = (int(v[1:]) for v in name.split("_")[-2:])
                assert np.array_equal(rgb, read_level_region(he, level, y0, x0, 256, 256)[..., :3])
                assert np.array_equal(lab["inst_map"], load_labels(src / "labels" / f"{name}.npz")["inst_map"])
                inst, n = lab["inst_map"], int(lab["inst_map"].max())
                assert set(np.unique(inst)) == set(range(n + 1))  # contiguous instance ids
                for i in range(1, n + 1):
                    px = inst == i
                    cell = np.unique(lab["cell_id_map"][px])
                    kind = np.unique(lab["type_map"][px])
                    assert len(cell) == 1 and len(kind) == 1   # one cell and one type per instance
                    assert kind[0] == g.class_index(by_int[cell[0]])
                assert (lab["type_map"][inst == 0] == 0).all() and (lab["cell_id_map"][inst == 0] == 0).all()
                assert counts.loc[image].sum() == n


def test_pannuke_arrays_follow_pannukes_channel_convention(tiled):
    home, _, _, _ = tiled
    d = home / "exports" / "tiny" / "pannuke" / "40x" / "detailed"
    images, masks = np.load(d / "images.npy", mmap_mode="r"), np.load(d / "masks.npy", mmap_mode="r")
    ids, types = np.load(d / "patch_ids.npy"), np.load(d / "types.npy")
    assert images.dtype == np.uint8 and images.shape[1:] == (256, 256, 3) and masks.shape[-1] == 9 + 1
    assert len(images) == len(masks) == len(ids) == len(types) > 0
    cv = home / "exports" / "tiny" / "cellvit" / "40x" / "detailed"
    for i in range(min(5, len(ids))):
        lab = load_labels(cv / "labels" / f"{ids[i]}.npz")
        assert np.array_equal(masks[i, ..., -1], (lab["inst_map"] == 0).astype(masks.dtype))  # background last
        for c in range(9):
            assert np.array_equal(masks[i, ..., c], np.where(lab["type_map"] == c + 1, lab["inst_map"], 0))
        assert np.array_equal(images[i], cv2.imread(str(cv / "images" / f"{ids[i]}.png"))[..., ::-1])


def test_sdata_export_opens_with_patches_and_labelled_table(tiled):
    from sthelar_platform.registration import open_registered_he

    home, _, _, _ = tiled
    sdata = open_registered_he(home / "exports" / "tiny")
    assert {"he"} <= set(sdata.images) and {"cell_boundaries", "nucleus_boundaries", "patches_40x", "patches_20x"} <= set(sdata.shapes)
    table = sdata["table"]
    assert table.uns["spatialdata_attrs"]["region"] == "cell_boundaries" and "category" in table.obs
    p40 = sdata["patches_40x"]
    assert {"dice", "jaccard", "bpq", "det_f1", "flagged"} <= set(p40.columns)
    assert len(p40) == len(pd.read_parquet(home / "warehouse" / "patches_40x" / "tiny" / "patches.parquet"))
    # the H&E is not stored again: the export holds a hard link of the one stored pyramid, no image chunks
    stored = home / "warehouse" / "he_image" / "tiny" / "he_image.ome.tif"
    assert (home / "exports" / "tiny" / "he_image.ome.tif").stat().st_ino == stored.stat().st_ino
    assert not (home / "exports" / "tiny" / "sdata.zarr" / "images").exists()


def test_patch_qc_rows_reach_lineage(tiled):
    home, _, _, _ = tiled
    store = LineageStore(home / "lineage.duckdb")
    rows = store.query("SELECT magnification, count(*) AS n, count(jaccard) AS defined, sum(flagged::INT) AS flagged "
                       "FROM patch_qc WHERE slide_id = ? GROUP BY magnification ORDER BY magnification", ["tiny"])
    n = {mag: len(pd.read_parquet(home / "warehouse" / f"patches_{mag}" / "tiny" / "patches.parquet")) for mag in ("20x", "40x")}
    assert [(r["magnification"], r["n"]) for r in rows] == [("20x", n["20x"]), ("40x", n["40x"])]
    assert all(r["defined"] == r["n"] for r in rows)  # every kept patch has a Xenium nucleus
    # the artefact measures reach lineage too, and every flagged patch says why
    rows = store.query("SELECT count(focus_ratio) AS focus, count(ink_fraction) AS ink, "
                       "count(*) FILTER (WHERE flagged <> (flag_reasons <> '')) AS unexplained, count(*) AS n "
                       "FROM patch_qc WHERE slide_id = ?", ["tiny"])[0]
    assert rows["ink"] == rows["n"] and rows["focus"] > 0.9 * rows["n"] and rows["unexplained"] == 0


def test_failed_export_keeps_the_earlier_one(tiled):
    home, _, instance, _ = tiled
    exports = home / "exports" / "tiny"
    before = sha256_tree(exports)
    victim = next((home / "warehouse" / "patches_40x" / "tiny" / "images").glob("*.png"))
    saved = victim.read_bytes()
    victim.unlink()
    try:
        r = _run(home, instance, "tiny", [a for a in sthelar_definitions.ALL_ASSETS if a.key == AssetKey("slide_export")])
    finally:
        victim.write_bytes(saved)
    assert not r.success
    assert sha256_tree(exports) == before
    assert not [p for p in exports.parent.iterdir() if p.name != "tiny" and not p.name.startswith("tiny.tmp-")]
    assert not list(exports.parent.glob("tiny.tmp-*"))


def test_training_dataset_splits_exported_slides_without_shared_pixels(tiled):
    import json

    home, _, instance, _ = tiled
    ds = [a for a in sthelar_definitions.COHORT_ASSETS if a.key == AssetKey("training_dataset")]
    r = materialize(ds, instance=instance, resources=sthelar_definitions.build_resources(str(home)))
    assert r.success
    meta = r.get_asset_materialization_events()[0].materialization.metadata
    assert meta["slides"].value == ["tiny"] and meta["slides_without_export"].value == ["mismatch"]
    root = home / "exports" / "dataset" / "40x" / "detailed"
    splits = pd.read_csv(root / "splits.csv")
    exported = pd.read_csv(home / "exports" / "tiny" / "cellvit" / "40x" / "detailed" / "cell_count.csv")
    card = json.loads((home / "exports" / "dataset" / "dataset_card.json").read_text())["groupings"]["detailed"]
    assert len(splits) + card["dropped_straddling"] == len(exported)
    assert sum(card["patches"].values()) == len(splits) and set(splits["split"]) <= {"train", "val", "test"}
    # no two patches of different splits overlap
    xy = splits["img"].str.extract(r"_x(\d+)_y(\d+)\.png$").astype(int).to_numpy()
    s = splits["split"].to_numpy()
    for i in range(len(xy)):
        near = (np.abs(xy[:, 0] - xy[i, 0]) < 256) & (np.abs(xy[:, 1] - xy[i, 1]) < 256)
        assert (s[near] == s[i]).all()
    img = root / "images" / splits["img"].iloc[0]
    assert img.stat().st_ino == (home / "exports" / "tiny" / "cellvit" / "40x" / "detailed" / "images" / img.name).stat().st_ino
    weights = json.loads((root / "class_weights.json").read_text())
    assert weights["classes"][0] == "background" and len(weights["weights"]) == 10
    # the same split, packaged for the STHELAR fork, the original CellViT trainer and Hugging Face datasets
    dataset = home / "exports" / "dataset"
    for mag in ("40x", "20x"):
        for grouping in ("detailed", "grouped"):
            own = pd.read_csv(dataset / mag / grouping / "splits.csv")
            assert len(own) > 0, (mag, grouping)
            fork = read_fork(dataset / "sthelar" / mag / grouping)
            assert len(fork) == len(own) and {s["tissue"] for s in fork.values()} == {"Breast"}
            assert set(read_cellvit_folds(dataset / "cellvit_folds" / mag / grouping)) == set(own["img"])
            shards = sorted((dataset / "hf" / mag / grouping / "data").glob("*.parquet"))
            assert sum(pq.read_metadata(s).num_rows for s in shards) == len(own)
    assert meta["layouts"].value.count("| sthelar |") == 4
