"""Counting and annotation assets in real Dagster on a tiny SYNTHETIC slide, scored against its truth."""

import json
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance, materialize
from sklearn.metrics import f1_score

import sthelar_definitions
from sthelar_platform.core.hashing import sha256_tree
from sthelar_platform.core.lineage import LineageStore
from sthelar_platform.ingest.manifest import SlideCatalog, load_manifest

STAGES = ("xenium_slide", "nucleus_counts", "cell_counts", "tangram_labels", "clusters", "cell_types")
ASSETS = [a for a in sthelar_definitions.ALL_ASSETS if a.key.to_user_string() in STAGES]


def _run(home, instance, slide="tiny", assets=ASSETS):
    return materialize(assets, partition_key=slide, instance=instance,
                       resources=sthelar_definitions.build_resources(str(home)), raise_on_error=False)


@pytest.fixture(scope="module")
def annotated(tmp_path_factory, tiny_cohort):
    tmp = tmp_path_factory.mktemp("ann_home")
    landing = tmp / "landing"
    shutil.copytree(tiny_cohort, landing)
    home = tmp / "home"
    SlideCatalog(home / "catalog.yaml").add(load_manifest(landing / "manifest.yaml"))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("slides", ["tiny"])
    return home, landing, instance, _run(home, instance)


def test_annotation_meets_accuracy_targets_against_truth(annotated):
    home, landing, _, result = annotated
    assert result.success
    labels = pd.read_parquet(home / "warehouse" / "cell_types" / "tiny" / "cell_labels.parquet").set_index("cell_id")
    truth = pl.read_parquet(landing / "slides" / "tiny" / "truth" / "cells.parquet").to_pandas().set_index("cell_id")
    truth = truth.loc[labels.index]
    acc = float((labels["category"] == truth["category"]).mean())
    macro_f1 = f1_score(truth["category"], labels["category"], average="macro")
    assert acc >= 0.95 and macro_f1 >= 0.90, (acc, macro_f1)
    assert (labels["detailed_class"] == truth["detailed_class"]).mean() >= 0.95
    assert (labels["grouped_class"] == truth["grouped_class"]).mean() >= 0.95
    assert labels["confidence"].between(0, 1).all() and labels.loc[labels["category"] == "Less10", "confidence"].eq(0).all()
    assert set(labels.columns) >= {"category", "detailed_class", "grouped_class", "confidence", "tangram_label",
                                   "cluster", "flagged", "crosscheck_label"}


def test_counts_are_the_xenium_matrix_and_cytoplasm_is_cell_minus_nucleus(annotated):
    home, _, _, _ = annotated
    w = home / "warehouse"
    cell = ad.read_h5ad(w / "cell_counts" / "tiny" / "cell.h5ad")
    cyto = ad.read_h5ad(w / "cell_counts" / "tiny" / "cytoplasm.h5ad")
    nuc = ad.read_h5ad(w / "nucleus_counts" / "tiny" / "nucleus.h5ad")
    xoa = ad.read_h5ad(w / "xenium_slide" / "tiny" / "expression.h5ad")
    assert abs(cell.X - xoa[cell.obs_names, cell.var_names].X).sum() == 0  # XOA counts qv >= 20, no controls
    assert abs(cell.X - nuc.X - cyto.X).sum() == 0 and cyto.X.min() >= 0
    assert cell.uns["spatialdata_attrs"] == {"region": "cell_boundaries", "region_key": "region", "instance_key": "cell_id"}
    assert nuc.uns["spatialdata_attrs"]["region"] == "nucleus_boundaries"


def test_checks_pass_and_qc_rows_reach_lineage(annotated):
    home, _, _, result = annotated
    evals = {e.event_specific_data.check_name: e.event_specific_data for e in result.all_events
             if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert evals["annotation_quality"].passed and evals["counts_valid"].passed
    assert evals["annotation_quality"].metadata["gx_expectations"].value == 6
    store = LineageStore(home / "lineage.duckdb")
    qc = store.query("SELECT n_cells, crosscheck_agreement, passed, reference_sha256 FROM annotation_qc")
    assert len(qc) == 1 and qc[0]["passed"] and qc[0]["crosscheck_agreement"] >= 0.9 and len(qc[0]["reference_sha256"]) == 64
    clusters = store.query("SELECT cluster, decision, top_markers, singler_majority, singler_agreement FROM annotation_clusters")
    assert len(clusters) >= 3 and all(c["top_markers"] for c in clusters)
    assert all(c["singler_majority"] and 0 <= c["singler_agreement"] <= 1 for c in clusters)
    md = next(m for m in result.get_asset_materialization_events()
              if m.asset_key == AssetKey("cell_types")).materialization.metadata
    assert "data:image/png;base64" in md["category_map"].value and sum(md["composition"].value.values()) == md["dagster/row_count"].value


def test_singler_cross_checks_every_annotated_cell(annotated):
    home, landing, _, _ = annotated
    labels = pd.read_parquet(home / "warehouse" / "cell_types" / "tiny" / "cell_labels.parquet").set_index("cell_id")
    active = labels[labels["category"] != "Less10"]
    assert active["singler_category"].notna().all() and labels.loc[labels["category"] == "Less10", "singler_category"].isna().all()
    truth = pl.read_parquet(landing / "slides" / "tiny" / "truth" / "cells.parquet").to_pandas().set_index("cell_id")
    assert (active["singler_category"] == truth.loc[active.index, "category"]).mean() >= 0.9
    qc = LineageStore(home / "lineage.duckdb").query("SELECT singler_agreement, singler_by_category FROM annotation_qc")
    by_category = json.loads(qc[0]["singler_by_category"])
    assert qc[0]["singler_agreement"] >= 0.9 and set(by_category) == set(active["category"])
    agreement = pd.read_parquet(home / "warehouse" / "cell_types" / "tiny" / "crosscheck_agreement.parquet")
    assert list(agreement.columns) == ["category", "n_cells", "agreement", "singler_agreement"]


def test_corrupt_reference_fails_clearly_and_keeps_the_last_good_labels(annotated):
    home, landing, instance, _ = annotated
    before = sha256_tree(home / "warehouse" / "cell_types" / "tiny")
    ref = landing / "references" / "breast.h5ad"
    good = ref.read_bytes()
    try:
        ref.write_bytes(good[:2000])
        result = _run(home, instance, assets=[a for a in ASSETS if a.key.to_user_string() in ("tangram_labels", "cell_types")])
        assert not result.success
        err = next(str(e.event_specific_data.error) for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        assert "breast.h5ad" in err and "not a readable .h5ad" in err and "Fix:" in err
        assert sha256_tree(home / "warehouse" / "cell_types" / "tiny") == before
    finally:
        ref.write_bytes(good)


def test_asset_graph_orders_annotation_after_counts():
    graph = sthelar_definitions.defs.resolve_asset_graph()
    parents = {k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys} for k in graph.get_all_asset_keys()}
    assert parents["cell_types"] == {"tangram_labels", "clusters", "cell_counts"}
    assert parents["tangram_labels"] == {"cell_counts", "nucleus_counts", "reference_atlas"}
    assert parents["cell_counts"] == parents["nucleus_counts"] == {"xenium_slide"}
    assert np.isin(["counts_valid", "annotation_quality"],
                   [k.name for k in graph.asset_check_keys]).all()
