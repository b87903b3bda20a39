"""The lineage store on both backends: embedded DuckDB, and a real PostgreSQL server started here."""

import multiprocessing as mp

import duckdb
import pytest
from _postgres import fresh_database, postgres_server

from sthelar_platform.core.lineage import LineageStore


@pytest.fixture(scope="module")
def pg_server():
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.slow)])  # slow: a Postgres server
def lineage_url(request) -> str | None:
    """None (DuckDB) or the URL of a fresh Postgres database."""
    return fresh_database(request.getfixturevalue("pg_server")) if request.param == "postgres" else None


def _writer(db: str, worker: int, n: int, url: str | None = None) -> None:
    store = LineageStore(db, url=url)
    for i in range(n):
        store.record("materializations", {"run_id": f"w{worker}", "asset_key": "xenium_slide",
                                          "partition_key": f"s{i}", "status": "success", "data_version": f"{worker}-{i}"})


def test_record_and_query_with_parameters(tmp_path, lineage_url):
    store = LineageStore(tmp_path / "lineage.duckdb", url=lineage_url)
    store.record("materializations", {"run_id": "r1", "asset_key": "he_image", "partition_key": "o'brien",
                                      "status": "success", "data_version": "abc", "finished_at": "2026-01-01T00:00:00"})
    assert store.latest_data_version("he_image", "o'brien") == "abc"
    assert store.latest_data_version("he_image", "other") is None
    with pytest.raises(KeyError):
        store.record("materializations", {"not_a_column": 1})
    with pytest.raises(KeyError):
        store.record("no_such_table", {})


def test_concurrent_writer_processes_lose_no_rows(tmp_path, lineage_url):
    db = str(tmp_path / "lineage.duckdb")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(db, w, 25, lineage_url)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = LineageStore(db, url=lineage_url)
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


def test_unmergeable_spool_files_are_quarantined_and_nothing_else_stops(tmp_path, lineage_url):
    import json

    store = LineageStore(tmp_path / "lineage.duckdb", url=lineage_url)
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
    assert "many" in quarantined["c-badvalue.json"]  # the database's own words about the refused value
    # kept byte for byte, never dropped: an operator can fix and move them back
    assert json.loads((store.quarantine / "a-foreign.json").read_text())["table"] == "future_table"
    store.record("materializations", {"run_id": "r4", "asset_key": "cell_types", "partition_key": "s1",
                                      "status": "success", "data_version": "v4"})
    assert store.latest_data_version("cell_types", "s1") == "v4"


@pytest.mark.slow  # a Postgres server
def test_postgres_snapshot_is_the_duckdb_file_dbt_reads_with_the_same_rows(tmp_path, pg_server):
    url = fresh_database(pg_server)
    pg = LineageStore(tmp_path / "pg" / "lineage.duckdb", url=url)
    local = LineageStore(tmp_path / "local" / "lineage.duckdb")
    rows = [{"run_id": "r1", "slide_id": "s1", "magnification": "40x", "patch_id": f"p{i}", "x0": i, "y0": 2 * i,
             "dice": 0.5 + i / 100, "jaccard": float("nan") if i == 3 else 0.4, "flagged": i % 2 == 0}
            for i in range(7)]
    for store in (pg, local):
        store.record_many("patch_qc", [{**r, "event_id": f"e{r['patch_id']}"} for r in rows])
        store.record("materializations", {"event_id": "m1", "run_id": "r1", "asset_key": "patches_40x",
                                          "partition_key": "s1", "status": "success", "data_version": "v1",
                                          "finished_at": "2026-12-01T08:00:00.123456"})
    pg.record_many("patch_qc", [{**rows[0], "event_id": "ep0"}])  # a re-merged file inserts nothing twice
    snaps = {name: store.snapshot(tmp_path / f"{name}.duckdb") for name, store in (("pg", pg), ("local", local))}
    dumps = {}
    for name, path in snaps.items():
        con = duckdb.connect(str(path), read_only=True)
        dumps[name] = {t: con.execute(f"SELECT * EXCLUDE (recorded_at) FROM {t} ORDER BY event_id").fetchall()
                       if t == "patch_qc" else con.execute(f"SELECT * FROM {t} ORDER BY event_id").fetchall()
                       for t in ("patch_qc", "materializations", "model_eval")}
        types = con.execute("SELECT table_name, column_name, data_type FROM information_schema.columns "
                            "ORDER BY ALL").fetchall()
        dumps[name]["types"] = types
        con.close()
    assert len(dumps["pg"]["patch_qc"]) == 7 and dumps["pg"]["model_eval"] == []
    assert dumps["pg"] == dumps["local"]


@pytest.mark.slow  # a Postgres server
def test_postgres_unreachable_keeps_rows_in_the_spool_until_it_is_back(tmp_path, pg_server):
    url = fresh_database(pg_server)
    down = LineageStore(tmp_path / "lineage.duckdb", url=url.replace(url.split("@")[1].split("/")[0], "127.0.0.1:9"))
    down.record("materializations", {"event_id": "late", "run_id": "r1", "status": "success"})
    assert down.pending() == 1  # durable, waiting
    back = LineageStore(tmp_path / "lineage.duckdb", url=url)
    assert back.query("SELECT event_id FROM materializations") == [{"event_id": "late"}]
    assert back.pending() == 0
    with pytest.raises(ValueError, match="use postgresql://") as err:
        LineageStore(tmp_path / "lineage.duckdb", url="mysql://root:secret@db/lineage")
    assert "secret" not in str(err.value)
