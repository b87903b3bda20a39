"""The ingest assets run in real Dagster against a tiny SYNTHETIC slide."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

import sthelar_definitions
from assets.ingest import he_image, xenium_slide
from sthelar_platform.core.atomic import TMP_MARKER
from sthelar_platform.core.hashing import sha256_tree
from sthelar_platform.core.lineage import LineageStore
from sthelar_platform.ingest.manifest import SlideCatalog, load_manifest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def home(tmp_path, tiny_cohort):
    landing = tmp_path / "landing"
    shutil.copytree(tiny_cohort, landing)
    home = tmp_path / "home"
    SlideCatalog(home / "catalog.yaml").add(load_manifest(landing / "manifest.yaml"))
    return home


def _run(home, slide="tiny", instance=None):
    resources = sthelar_definitions.build_resources(str(home))
    inst = instance or DagsterInstance.ephemeral()
    inst.add_dynamic_partitions("slides", [slide])
    return materialize([xenium_slide, he_image], partition_key=slide, instance=inst, resources=resources,
                       raise_on_error=False)


def test_ingest_assets_materialize_with_metadata_and_lineage(home):
    result = _run(home)
    assert result.success
    mats = {m.asset_key.to_user_string(): m for m in result.get_asset_materialization_events()}
    md = mats["xenium_slide"].materialization.metadata
    assert md["n_cells"].value > 200 and md["n_transcripts"].value > 10000 and md["dagster/row_count"].value == md["n_cells"].value
    assert "data:image/png;base64" in md["dapi_thumbnail"].value
    assert mats["he_image"].materialization.metadata["magnification"].value == "40x"
    assert (home / "warehouse" / "xenium_slide" / "tiny" / "transcripts.parquet").exists()
    rows = LineageStore(home / "lineage.duckdb").query(
        "SELECT asset_key, status, data_version, code_version FROM materializations ORDER BY asset_key")
    assert [(r["asset_key"], r["status"]) for r in rows] == [("he_image", "success"), ("xenium_slide", "success")]
    assert rows[1]["data_version"] == sha256_tree(home / "warehouse" / "xenium_slide" / "tiny")
    assert all(len(r["code_version"]) == 12 for r in rows)
    ing = LineageStore(home / "lineage.duckdb").query("SELECT n_cells, tissue FROM slide_ingest")
    assert ing == [{"n_cells": md["n_cells"].value, "tissue": "breast"}]


def test_failed_rerun_keeps_good_output_and_records_failure(home):
    assert _run(home).success
    out = home / "warehouse" / "xenium_slide" / "tiny"
    before = sha256_tree(out)
    spec = SlideCatalog(home / "catalog.yaml").get("tiny")
    tx = spec.xenium_dir / "transcripts.parquet"
    tx.write_bytes(tx.read_bytes()[:1000])  # the landing copy gets truncated
    result = _run(home)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "transcripts.parquet" in str(failure.event_specific_data.error) and "Fix:" in str(failure.event_specific_data.error)
    assert sha256_tree(out) == before
    assert not [p for p in out.parent.iterdir() if TMP_MARKER in p.name]
    rows = LineageStore(home / "lineage.duckdb").query(
        "SELECT status, error FROM materializations WHERE asset_key = 'xenium_slide' ORDER BY started_at")
    assert [r["status"] for r in rows] == ["success", "failure"] and "not a readable parquet" in rows[1]["error"]


def test_unregistered_or_unsafe_partition_fails_clearly(home):
    result = _run(home, slide="../x")
    assert not result.success
    errors = [str(e.event_specific_data.error) for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert errors and all("invalid slide id" in e for e in errors)
    assert not (home / "warehouse").exists() or not any((home / "warehouse").rglob("x"))


COHORT = {"training_dataset", "cellvit_detailed", "cellvit_grouped", "model_evaluation", "qc_dashboard"}
PIPELINE = ["cell_counts", "cell_types", "cellvit_detailed", "cellvit_grouped", "clusters", "he_image", "he_registration",
            "model_evaluation", "nucleus_counts", "patches_20x", "patches_40x", "qc_dashboard", "reference_segmentation",
            "registered_he", "segmentation_agreement", "slide_export", "slide_predictions", "tangram_labels",
            "training_dataset", "xenium_slide"]
DBT_MODELS = ["annotation_review", "model_leaderboard", "output_lineage", "patch_quality", "slide_summary",
              "staging/stg_annotation_clusters", "staging/stg_annotation_qc", "staging/stg_materializations",
              "staging/stg_model_eval", "staging/stg_model_training", "staging/stg_patch_qc",
              "staging/stg_prediction_agreement", "staging/stg_registration_qc", "staging/stg_slide_ingest"]


def test_asset_graph_snapshot():
    defs = sthelar_definitions.defs
    graph = defs.resolve_asset_graph()
    assert sorted(k.to_user_string() for k in graph.materializable_asset_keys) == sorted(PIPELINE + DBT_MODELS)
    # observed / external: the reference atlases and the lineage tables no Python asset owns alone
    assert sorted(k.to_user_string() for k in defs.resolve_all_asset_keys() if k not in graph.materializable_asset_keys) \
        == ["lineage/annotation_clusters", "lineage/materializations", "reference_atlas"]
    checks = sorted(k.name for k in graph.asset_check_keys if not k.asset_key.to_user_string() in DBT_MODELS)
    assert checks == ["alignment_csv_agreement", "annotation_quality", "counts_valid", "he_pixel_size_known",
                      "lineage_quarantine", "model_targets", "patch_quality", "registration_quality"]
    assert sum(k.asset_key.to_user_string() in DBT_MODELS for k in graph.asset_check_keys) == 41  # the dbt tests
    upstream = {k.to_user_string(): sorted(p.to_user_string() for p in graph.get(k).parent_keys)
                for k in graph.get_all_asset_keys()}
    assert upstream["patches_40x"] == ["cell_types", "he_image", "he_registration", "xenium_slide"]
    assert upstream["segmentation_agreement"] == ["patches_20x", "patches_40x", "reference_segmentation"]
    assert upstream["slide_export"] == ["cell_counts", "cell_types", "registered_he", "segmentation_agreement"]
    assert upstream["training_dataset"] == ["slide_export"]
    assert upstream["cellvit_detailed"] == upstream["cellvit_grouped"] == ["training_dataset"]
    assert upstream["model_evaluation"] == ["cellvit_detailed", "cellvit_grouped"]
    assert upstream["slide_predictions"] == ["cell_types", "cellvit_detailed", "cellvit_grouped", "he_image",
                                             "he_registration", "xenium_slide"]
    job = defs.resolve_job_def("slide_pipeline")
    assert job.partitions_def.name == "slides"
    for key in graph.materializable_asset_keys:
        if key.to_user_string() in DBT_MODELS:
            continue
        spec = defs.resolve_assets_def(key)
        assert spec.code_versions_by_key[key]
        if key.to_user_string() in COHORT:  # cohort assets: one across slides
            assert spec.partitions_def is None
        else:
            assert spec.partitions_def.name == "slides"
    assert defs.resolve_job_def("training_job").partitions_def is None
    assert defs.resolve_job_def("predictions_job").partitions_def.name == "slides"


def test_workspace_loads_with_dagster_cli(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "STHELAR_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_readme_asset_graph_figure_matches_the_definitions():
    """docs/img/asset_graph.png is drawn from the same description as docs/img/asset_graph.json."""
    import json

    root = ROOT
    sys.path.insert(0, str(root / "docs"))
    from asset_graph import graph_description

    committed = json.loads((root / "docs" / "img" / "asset_graph.json").read_text())
    assert committed == json.loads(json.dumps(graph_description())), \
        "the asset graph changed: redraw it with `.venv/bin/python docs/asset_graph.py`"
    assert (root / "docs" / "img" / "asset_graph.png").stat().st_size > 10_000
    assert "docs/img/asset_graph.png" in (root / "README.md").read_text()
