"""Lineage records the input versions an asset actually read, and an output computed from an input
that was rewritten mid-run is discarded (the earlier output stays)."""

import json
from pathlib import Path

import pytest
from dagster import AssetExecutionContext, DagsterInstance, StaticPartitionsDefinition, asset, materialize

from assets._runtime import StageOutput, run_slide_stage
from resources import LineageResource, StorageResource
from sthelar_platform.core.hashing import VERSION_MARKER
from sthelar_platform.core.lineage import LineageStore

PARTS = StaticPartitionsDefinition(["s1"])
REWRITE_UP_DURING_DOWN = {"on": False}


@asset(partitions_def=PARTS)
def up(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource):
    text = context.run.tags.get("text", "v1")
    return run_slide_stage(context, "up", storage, lineage,
                           lambda tmp: StageOutput({"n": (tmp / "x.txt").write_text(text)}, None)).result()


@asset(partitions_def=PARTS, deps=[up])
def down(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource):
    def compute(tmp: Path):
        read = (storage.stage_dir("up", "s1") / "x.txt").read_text()
        if REWRITE_UP_DURING_DOWN["on"]:  # an upstream run lands while this one computes
            _run([up], storage, "v3")
        (tmp / "y.txt").write_text(read.upper())
        return StageOutput({"read": read}, None)
    return run_slide_stage(context, "down", storage, lineage, compute, inputs=("up",)).result()


def _run(assets, storage: StorageResource, text: str, raise_on_error: bool = True):
    lineage = LineageResource(db_path=str(Path(storage.root) / "lineage.duckdb"))
    with DagsterInstance.ephemeral() as instance:
        return materialize(assets, partition_key="s1", instance=instance, tags={"text": text},
                           resources={"storage": storage, "lineage": lineage}, raise_on_error=raise_on_error)


def _rows(home: Path, asset_key: str) -> list[dict]:
    return LineageStore(home / "lineage.duckdb").query(
        "SELECT status, data_version, input_versions, error FROM materializations WHERE asset_key = ? "
        "ORDER BY finished_at", [asset_key])


@pytest.fixture
def storage(tmp_path) -> StorageResource:
    REWRITE_UP_DURING_DOWN["on"] = False
    return StorageResource(root=str(tmp_path))


def test_recorded_input_version_is_the_one_on_disk_not_lineages_latest(storage, tmp_path):
    _run([up], storage, "v1")
    on_disk = json.loads((storage.stage_dir("up", "s1") / VERSION_MARKER).read_text())["data_version"]
    assert on_disk == _rows(tmp_path, "up")[-1]["data_version"]
    # lineage says a newer `up` finished (its swap did not land here: another host, a lost volume)
    LineageStore(tmp_path / "lineage.duckdb").record("materializations", {
        "asset_key": "up", "partition_key": "s1", "status": "success", "data_version": "f" * 64,
        "finished_at": "2999-01-01T00:00:00", "output_uri": storage.stage_dir("up", "s1").as_uri()})
    _run([down], storage, "")
    row = _rows(tmp_path, "down")[-1]
    assert row["status"] == "success" and json.loads(row["input_versions"]) == {"up": on_disk}
    marker = json.loads((storage.stage_dir("down", "s1") / VERSION_MARKER).read_text())
    assert marker["input_versions"] == {"up": on_disk} and marker["data_version"] == row["data_version"]


def test_an_input_rewritten_mid_run_discards_the_output_and_keeps_the_earlier_one(storage, tmp_path):
    _run([up], storage, "v1")
    _run([down], storage, "")
    out = storage.stage_dir("down", "s1")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _run([up], storage, "v2")
    REWRITE_UP_DURING_DOWN["on"] = True
    result = _run([down], storage, "", raise_on_error=False)
    assert not result.success
    row = _rows(tmp_path, "down")[-1]
    assert row["status"] == "failure" and "input up was rewritten while down[s1] ran" in row["error"]
    assert "re-run this asset" in row["error"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier output, byte for byte
    assert (storage.stage_dir("up", "s1") / "x.txt").read_text() == "v3"
