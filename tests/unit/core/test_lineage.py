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
