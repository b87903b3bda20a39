"""The Dagster UI as users drive it: `dagster dev` (webserver + daemon) on localhost against a home
with the tiny SYNTHETIC slide; chromium opens the asset graph; a materialization of the slide
partition is launched through the GraphQL mutation the UI's Materialize button sends; the run
succeeds with its asset checks, and its page shows it."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from _browser import chromium, free_port, screenshot, wait_for_http
from dagster import DagsterEventType, DagsterInstance
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.slow  # a real webserver, daemon and chromium
ROOT = Path(__file__).resolve().parents[2]

LAUNCH = """
mutation LaunchPipelineExecution($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { id runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
  }
}"""
STATUS = 'query RunStatus($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run { status } } }'


def _gql(url: str, query: str, variables: dict | None = None) -> dict:
    req = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=60).read())


def _skip_welcome(driver) -> None:
    """Dismiss the first-visit community dialog, as a user would."""
    deadline = time.time() + 10
    while time.time() < deadline:
        found = driver.find_elements(By.XPATH, "//*[normalize-space(text())='Skip']")
        if found:
            found[0].click()
            return
        time.sleep(0.5)


def test_materialize_a_slide_partition_from_the_ui(tiny_cohort, tmp_path, monkeypatch):
    home = tmp_path / "home"
    r = subprocess.run([sys.executable, "-m", "sthelar_cli", "--home", str(home), "slides", "add",
                        "--manifest", str(tiny_cohort / "manifest.yaml")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DAGSTER_HOME": str(home / "dagster"), "STHELAR_HOME": str(home), "STHELAR_DEVICE": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1",
                             "-p", str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    driver = None
    try:
        wait_for_http(f"{url}/server_info", 300, proc)
        driver = chromium()
        driver.get(f"{url}/asset-groups")
        WebDriverWait(driver, 120).until(lambda d: "Global asset lineage" in d.page_source and all(
            g in d.page_source for g in ("ingest", "registration", "annotation", "patches", "training", "qc")))
        _skip_welcome(driver)
        screenshot(driver, tmp_path / "ui_asset_graph.png")
        driver.get(f"{url}/assets/xenium_slide?view=partitions")  # the asset's partitions tab
        WebDriverWait(driver, 120).until(lambda d: "xenium_slide" in d.page_source and "tiny" in d.page_source)

        jobs = _gql(url, "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } "
                         "jobs { name } } } } }")["data"]["repositoriesOrError"]["nodes"]
        repo = next(n for n in jobs if any(j["name"] == "slide_pipeline" for j in n["jobs"]))
        params = {"selector": {"repositoryLocationName": repo["location"]["name"], "repositoryName": repo["name"],
                               "pipelineName": "slide_pipeline",
                               "assetSelection": [{"path": [k]} for k in (
                                   "xenium_slide", "he_image", "he_registration", "registered_he", "nucleus_counts",
                                   "cell_counts", "tangram_labels", "clusters", "cell_types", "patches_40x",
                                   "patches_20x", "reference_segmentation", "segmentation_agreement")]},
                  "mode": "default", "runConfigData": "{}",
                  "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "tiny"}]}}
        launched = _gql(url, LAUNCH, {"executionParams": params})["data"]["launchPipelineExecution"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        status, deadline = None, time.time() + 600
        while time.time() < deadline:
            status = _gql(url, STATUS, {"runId": run_id})["data"]["runOrError"]["status"]
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                break
            assert proc.poll() is None, "dagster dev exited"
            time.sleep(2)
        assert status == "SUCCESS", status

        monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
        with DagsterInstance.get() as instance:
            checks = {e.dagster_event.event_specific_data.check_name: e.dagster_event.event_specific_data.passed
                      for e in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)}
            run = instance.get_run_by_id(run_id)
        assert run.tags["dagster/partition"] == "tiny"
        assert {"registration_quality", "counts_valid", "annotation_quality", "patch_quality"} <= set(checks)
        assert checks["registration_quality"] and checks["patch_quality"] and checks["annotation_quality"]

        driver.get(f"{url}/runs/{run_id}")
        WebDriverWait(driver, 120).until(lambda d: "Success" in d.page_source or "SUCCESS" in d.page_source)
        assert screenshot(driver, tmp_path / "ui_run.png").stat().st_size > 10_000
    finally:
        if driver is not None:
            driver.quit()
        os.killpg(proc.pid, 15)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.communicate()
