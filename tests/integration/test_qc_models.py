"""dbt_qc through dagster-dbt on SYNTHETIC QC rows: models, dbt tests as asset checks, a failing test,
and two QC refreshes at once while the pipeline keeps writing."""

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from dagster import DagsterInstance, materialize
from synthetic_qc import write_synthetic_qc

import sthelar_definitions
from sthelar_platform.core.lineage import LineageStore

pytestmark = pytest.mark.slow  # dbt builds, a real Postgres server
ROOT = Path(__file__).resolve().parents[2]


def _refresh(home):
    return materialize(sthelar_definitions.QC_ASSETS, instance=DagsterInstance.ephemeral(),
                       resources=sthelar_definitions.build_resources(str(home)), raise_on_error=False)


def _checks(result):
    return {(e.event_specific_data.asset_key.to_user_string(), e.event_specific_data.check_name):
            e.event_specific_data.passed for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


@pytest.fixture(scope="module")
def qc_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("qc_home")
    slides = write_synthetic_qc(home / "lineage.duckdb", n_slides=3, n_patches=400)
    return home, slides, _refresh(home)


def test_models_build_and_dbt_tests_run_as_asset_checks(qc_home):
    home, slides, result = qc_home
    assert result.success
    materialized = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    assert {"slide_summary", "patch_quality", "annotation_review", "model_leaderboard", "output_lineage",
            "staging/stg_patch_qc", "qc_dashboard"} <= materialized
    checks = _checks(result)
    assert len(checks) >= 30 and all(checks.values()), [k for k, v in checks.items() if not v]
    assert ("patch_quality", "unique_combination_patch_quality_slide_id__magnification__patch_id") in checks
    con = duckdb.connect(str(home / "qc" / "qc.duckdb"), read_only=True)
    try:
        summary = con.execute("SELECT slide_id, n_patches_40x, n_patches_20x, qc_status FROM slide_summary "
                              "ORDER BY slide_id").fetchall()
        assert [r[0] for r in summary] == slides
        assert all(r[1] == 400 and r[2] == 100 and r[3] in ("pass", "fail") for r in summary)
        n = con.execute("SELECT count(*) FROM patch_quality").fetchone()[0]
        assert n == 3 * 500
    finally:
        con.close()
    assert not list((home / "qc").glob("*.tmp-*"))  # snapshots and half-built databases are cleaned up


def test_dbt_models_sit_downstream_of_the_python_assets_that_feed_them():
    graph = sthelar_definitions.defs.resolve_asset_graph()
    parents = {k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys}
               for k in graph.get_all_asset_keys()}
    assert parents["staging/stg_patch_qc"] == {"segmentation_agreement"}
    assert parents["staging/stg_registration_qc"] == {"he_registration"}
    assert parents["staging/stg_model_eval"] == {"model_evaluation"}
    assert {"slide_summary", "patch_quality", "annotation_review", "model_leaderboard"} <= parents["qc_dashboard"]


def test_a_failing_dbt_test_is_a_failed_check_and_shown_on_the_dashboard(qc_home, tmp_path):
    home = tmp_path / "home"
    write_synthetic_qc(home / "lineage.duckdb", n_slides=2, n_patches=50)
    LineageStore(home / "lineage.duckdb").record("patch_qc", {
        "run_id": "bad", "slide_id": "synthqc-000", "magnification": "40x", "patch_id": "40x_x999999_y999999",
        "x0": 0, "y0": 0, "n_nuclei": 3, "dice": 1.7, "jaccard": 1.5, "bpq": 0.5, "det_f1": 0.5, "flagged": False,
        "recorded_at": "2100-01-01T00:00:00"})
    result = _refresh(home)
    assert result.success  # a data-quality failure is reported, not a crash
    failed = {k for k, v in _checks(result).items() if not v}
    assert ("patch_quality", "value_between_patch_quality_jaccard__1__0") in failed
    index = (home / "dashboards" / "site" / "index.html").read_text()
    assert "value_between_patch_quality_jaccard__1__0" in index and 'class="badge fail">fail' in index
    results = json.loads((home / "qc" / "dbt_run_results.json").read_text())
    # dbt runs tests on several threads: results come in completion order
    assert sorted(r["unique_id"].split(".")[2] for r in results["results"] if r["status"] in ("fail", "warn")) == [
        "value_between_patch_quality_dice__1__0", "value_between_patch_quality_jaccard__1__0"]


def test_two_qc_refreshes_at_once_while_the_pipeline_writes(tmp_path):
    home = tmp_path / "home"
    write_synthetic_qc(home / "lineage.duckdb", n_slides=2, n_patches=100)
    code = ("import sys, sthelar_definitions as d; from dagster import materialize, DagsterInstance; "
            "r = materialize(d.QC_ASSETS, instance=DagsterInstance.ephemeral(), resources=d.build_resources(sys.argv[1]), "
            "raise_on_error=False); sys.exit(0 if r.success else 1)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(home)], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    write_synthetic_qc(home / "lineage.duckdb", n_slides=4, n_patches=100, seed=1)  # the pipeline keeps writing
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    con = duckdb.connect(str(home / "qc" / "qc.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM slide_summary").fetchone()[0] in (2, 4)
    finally:
        con.close()
    # nothing was lost: every written row is in the lineage database
    assert LineageStore(home / "lineage.duckdb").query("SELECT count(*) AS n FROM patch_qc")[0]["n"] == 2 * 125 + 4 * 125
    assert not list((home / "qc").glob("*.tmp-*"))


def test_quarantined_lineage_files_warn_and_show_on_the_dashboard(tmp_path):
    home = tmp_path / "home"
    write_synthetic_qc(home / "lineage.duckdb", n_slides=2, n_patches=50)
    store = LineageStore(home / "lineage.duckdb")
    (store.spool / "zz-from-a-newer-deployment.json").write_text(json.dumps({"table": "gpu_usage", "row": {"h": 1}}))
    result = materialize(sthelar_definitions.QC_ASSETS, instance=DagsterInstance.ephemeral(),
                         resources=sthelar_definitions.build_resources(str(home)), raise_on_error=False)
    assert result.success  # the platform goes on: every other row merged, the dashboard built
    assert _checks(result)[("qc_dashboard", "lineage_quarantine")] is False
    meta = next(m for m in result.get_asset_materialization_events() if m.asset_key.to_user_string() == "qc_dashboard")
    assert meta.materialization.metadata["n_quarantined_lineage_files"].value == 1
    index = (home / "dashboards" / "site" / "index.html").read_text()
    assert "zz-from-a-newer-deployment.json" in index and "gpu_usage" in index
    assert (store.quarantine / "zz-from-a-newer-deployment.json").exists() and store.pending() == 0


def test_qc_refresh_with_lineage_in_a_real_postgres_server(tmp_path, monkeypatch):
    """STHELAR_LINEAGE_URL: the pipeline's rows and the QC assets' own records live in Postgres; dbt builds
    from a DuckDB snapshot exported from it; no lineage.duckdb is ever created."""
    from _postgres import fresh_database, postgres_server

    home = tmp_path / "home"
    with postgres_server() as server:
        url = fresh_database(server)
        slides = write_synthetic_qc(home / "lineage.duckdb", n_slides=2, n_patches=60, url=url)
        monkeypatch.setenv("STHELAR_LINEAGE_URL", url)
        result = _refresh(home)
        assert result.success
        con = duckdb.connect(str(home / "qc" / "qc.duckdb"), read_only=True)
        try:
            assert [r[0] for r in con.execute("SELECT slide_id FROM slide_summary ORDER BY slide_id").fetchall()] == slides
            assert con.execute("SELECT count(*) FROM patch_quality").fetchone()[0] == 2 * 75
        finally:
            con.close()
        store = LineageStore(home / "lineage.duckdb", url=url)
        recorded = {r["asset_key"] for r in store.query(
            "SELECT DISTINCT asset_key FROM materializations WHERE status = 'success'")}
        assert "qc_dashboard" in recorded  # written by the QC assets themselves, into Postgres
        assert not (home / "lineage.duckdb").exists()
