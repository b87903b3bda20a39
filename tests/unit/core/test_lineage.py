import multiprocessing as mp

import duckdb
import pytest

from sthelar_platform.core.lineage import LineageStore


def _writer(db: str, worker: int, n: int) -> None:
    store = LineageStore(db)
    for i in range(n):
        store.record("materializations", {"run_id": f"w{worker}", "asset_key": "xenium_slide",
                                          "partition_key": f"s{i}", "status": "success", "data_version": f"{worker}-{i}"})


def test_record_and_query_with_parameters(tmp_path):
    store = LineageStore(tmp_path / "lineage.duckdb")
    store.record("materializations", {"run_id": "r1", "asset_key": "he_image", "partition_key": "o'brien",
                                      "status": "success", "data_version": "abc", "finished_at": "2026-01-01T00:00:00"})
    assert store.latest_data_version("he_image", "o'brien") == "abc"
    assert store.latest_data_version("he_image", "other") is None
    with pytest.raises(KeyError):
        store.record("materializations", {"not_a_column": 1})
    with pytest.raises(KeyError):
        store.record("no_such_table", {})


def test_concurrent_writer_processes_lose_no_rows(tmp_path):
    db = str(tmp_path / "lineage.duckdb")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(db, w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = LineageStore(db)
    rows = store.query("SELECT run_id, count(*) AS n FROM materializations GROUP BY run_id ORDER BY run_id")
    assert rows == [{"run_id": f"w{w}", "n": 25} for w in range(4)]
    assert store.pending() == 0


def test_rows_written_while_database_is_held_are_merged_later(tmp_path):
    db = tmp_path / "lineage.duckdb"
    store = LineageStore(db, lock_timeout_s=0.5)
    store.record("materializations", {"run_id": "first", "status": "success"})
    # Another process holding the database read-write (e.g. dbt) blocks merging, not recording.
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(db), ready, release))
    holder.start()
    assert ready.wait(60)
    store.record("materializations", {"run_id": "while_held", "status": "success"})
    assert store.pending() == 1
    release.set()
    holder.join(60)
    assert store.flush() == 1
    assert {r["run_id"] for r in store.query("SELECT run_id FROM materializations")} == {"first", "while_held"}


def _hold(db, ready, release):
    con = duckdb.connect(db)
    ready.set()
    release.wait(60)
    con.close()


def test_older_database_gains_new_columns(tmp_path):
    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE registration_qc (event_id VARCHAR PRIMARY KEY, slide_id VARCHAR, passed BOOLEAN)")
    con.execute("INSERT INTO registration_qc VALUES ('e1', 's1', true)")
    con.close()
    store = LineageStore(db)
    store.record("registration_qc", {"slide_id": "s2", "passed": False, "magnification": "40x"})
    rows = store.query("SELECT slide_id, passed, magnification FROM registration_qc ORDER BY slide_id")
    assert rows == [{"slide_id": "s1", "passed": True, "magnification": None},
                    {"slide_id": "s2", "passed": False, "magnification": "40x"}]


def test_unmergeable_spool_files_are_quarantined_and_nothing_else_stops(tmp_path):
    import json

    store = LineageStore(tmp_path / "lineage.duckdb")
    store.record("materializations", {"run_id": "r0", "asset_key": "he_image", "partition_key": "s0",
                                      "status": "success", "data_version": "v0"})
    # a newer deployment's table, a truncated file, a value DuckDB refuses, a column this version lacks
    (store.spool / "a-foreign.json").write_text(json.dumps({"table": "future_table", "row": {"x": 1}}))
    (store.spool / "b-truncated.json").write_text('{"table": "materializations", "row": {"run_')
    (store.spool / "c-badvalue.json").write_text(json.dumps(
        {"table": "slide_ingest", "row": {"run_id": "r1", "slide_id": "s1", "n_cells": "many"}}))
    (store.spool / "d-newcolumn.json").write_text(json.dumps(
        {"table": "materializations", "row": {"run_id": "r2", "asset_key": "x", "gpu_hours": 3}}))
    store.record("materializations", {"run_id": "r3", "asset_key": "xenium_slide", "partition_key": "s1",
                                      "status": "success", "data_version": "v3"}, flush=False)
    assert store.latest_data_version("xenium_slide", "s1") == "v3"  # the good row merged, no KeyError
    assert store.latest_data_version("he_image", "s0") == "v0"
    assert store.pending() == 0
    quarantined = {q["file"]: q["reason"] for q in store.quarantined()}
    assert set(quarantined) == {"a-foreign.json", "b-truncated.json", "c-badvalue.json", "d-newcolumn.json"}
    assert "future_table" in quarantined["a-foreign.json"] and "gpu_hours" in quarantined["d-newcolumn.json"]
    assert "Conversion" in quarantined["c-badvalue.json"] or "many" in quarantined["c-badvalue.json"]
    # kept byte for byte, never dropped: an operator can fix and move them back
    assert json.loads((store.quarantine / "a-foreign.json").read_text())["table"] == "future_table"
    store.record("materializations", {"run_id": "r4", "asset_key": "cell_types", "partition_key": "s1",
                                      "status": "success", "data_version": "v4"})
    assert store.latest_data_version("cell_types", "s1") == "v4"
