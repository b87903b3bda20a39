"""The real Dagster daemon runs the slide sensor: a half-copied landing folder is left alone; once the
copy completes, the slide becomes a partition and exactly one slide-pipeline run is requested."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance

from sthelar_cli.runner import init_instance_storage
from sthelar_platform.core.config import PACKAGED_CONFIG_DIR
from sthelar_platform.ingest.manifest import SlideCatalog, specs_from_folder

pytestmark = pytest.mark.slow  # a real Dagster daemon
ROOT = Path(__file__).resolve().parents[2]


def _age(folder: Path, seconds: float) -> None:
    t = time.time() - seconds
    for p in folder.rglob("*"):
        os.utime(p, (t, t))


def _sensor_ticks(instance: DagsterInstance, name: str) -> list:
    for state in instance.all_instigator_state():
        if state.instigator_name == name:
            return list(instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=100))
    return []


def _landing_runs(instance: DagsterInstance, slide_id: str) -> list:
    return [r for r in instance.get_runs() if r.tags.get("dagster/partition") == slide_id
            and r.tags.get("sthelar/source") == "landing"]


def _wait(predicate, timeout_s: float, proc, what: str):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        assert proc.poll() is None, f"the daemon exited ({proc.returncode}) while waiting for {what}"
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def test_daemon_sensor_waits_for_a_complete_upload_then_requests_one_run(tiny_slide, tmp_path, monkeypatch):
    home, dagster_home, config = tmp_path / "home", tmp_path / "home" / "dagster", tmp_path / "config"
    dagster_home.mkdir(parents=True)
    config.mkdir()
    # runs stay queued (nothing executes): the test is about what the sensor requests
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nrun_queue:\n  max_concurrent_runs: 0\n")
    pipeline = yaml.safe_load((PACKAGED_CONFIG_DIR / "pipeline.yaml").read_text())
    pipeline["automation"].update({"landing_interval_s": 1, "landing_settle_s": 1})
    (config / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    upload = home / "landing" / "incoming" / "landed_slide"
    shutil.copytree(tiny_slide / "xenium", upload / "xenium", ignore=lambda d, n: ["transcripts.parquet"])
    shutil.copy2(next((tiny_slide / "he").glob("*he_image.ome.tif")), upload / "he_image.ome.tif")
    (upload / "slide.yaml").write_text("tissue: breast\nsynthetic: true\n")
    _age(upload, 600)

    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "STHELAR_HOME": str(home), "STHELAR_CONFIG_DIR": str(config)}
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    init_instance_storage()  # as `sthelar ui` does: the daemon and its code server would race to create it
    log = (tmp_path / "daemon.log").open("w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=log, text=True)
    try:
        with DagsterInstance.get() as instance:
            _wait(lambda: len(_sensor_ticks(instance, "slide_landing_sensor")) >= 3, 240, proc, "three sensor ticks")
            assert _landing_runs(instance, "landed_slide") == []
            assert not SlideCatalog(home / "catalog.yaml").list()
            assert "landed_slide" not in instance.get_dynamic_partitions("slides")

            shutil.copy2(tiny_slide / "xenium" / "transcripts.parquet", upload / "xenium" / "transcripts.parquet")
            _age(upload, 600)
            runs = _wait(lambda: _landing_runs(instance, "landed_slide"), 120, proc, "the slide's run request")
            assert runs[0].job_name == "slide_pipeline"
            assert "landed_slide" in instance.get_dynamic_partitions("slides")
            spec = SlideCatalog(home / "catalog.yaml").get("landed_slide")
            assert spec.tissue == "breast" and spec.xenium_dir == upload / "xenium"
            n = len(_sensor_ticks(instance, "slide_landing_sensor"))
            _wait(lambda: len(_sensor_ticks(instance, "slide_landing_sensor")) >= n + 2, 60, proc, "two more ticks")
            assert len(_landing_runs(instance, "landed_slide")) == 1  # the same upload is requested once
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        print((tmp_path / "daemon.log").read_text()[-4000:])


def _landing_copy(tiny_slide, home: Path, slide_id: str) -> Path:
    upload = home / "landing" / "incoming" / slide_id
    shutil.copytree(tiny_slide / "xenium", upload / "xenium")
    shutil.copy2(next((tiny_slide / "he").glob("*he_image.ome.tif")), upload / "he_image.ome.tif")
    (upload / "slide.yaml").write_text("tissue: breast\nsynthetic: true\n")
    _age(upload, 600)
    return upload


def _tick(home: Path, cursor: str | None):
    from dagster import build_sensor_context

    from assets.automation import slide_landing_sensor
    from resources import SlideCatalogResource, StorageResource

    with DagsterInstance.ephemeral() as instance:
        ctx = build_sensor_context(instance=instance, cursor=cursor, resources={
            "storage": StorageResource(root=str(home)), "catalog": SlideCatalogResource(path=str(home / "catalog.yaml"))})
        return slide_landing_sensor(ctx)


def test_a_landing_folder_does_not_re_point_a_registered_slide_without_consent(tiny_slide, tmp_path, monkeypatch):
    """An operator registered `s1` at their own files; an upload named `s1` must not take it over."""
    home = tmp_path / "home"
    operator = SlideCatalog(home / "catalog.yaml")
    operator.add([specs_from_folder(tiny_slide, "breast", "s1")])
    before = (home / "catalog.yaml").read_bytes()
    _landing_copy(tiny_slide, home, "s1")
    result = _tick(home, None)
    result = _tick(home, result.cursor)  # the second look finds it complete and settled
    assert not result.run_requests
    assert (home / "catalog.yaml").read_bytes() == before

    config = tmp_path / "config"
    config.mkdir()
    pipeline = yaml.safe_load((PACKAGED_CONFIG_DIR / "pipeline.yaml").read_text())
    pipeline["automation"]["landing_replace_existing"] = True
    (config / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    monkeypatch.setenv("STHELAR_CONFIG_DIR", str(config))
    result = _tick(home, _tick(home, None).cursor)
    assert [r.partition_key for r in result.run_requests] == ["s1"]
    assert SlideCatalog(home / "catalog.yaml").get("s1").xenium_dir == home / "landing" / "incoming" / "s1" / "xenium"
