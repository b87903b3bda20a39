"""Lineage throughput on both backends: concurrent single-row writers, one bulk patch_qc write, a snapshot.

Usage: python benchmarks/lineage_backends.py [--writers 4] [--rows 250] [--bulk 100000] [--out FILE.json]

DuckDB is the embedded file; Postgres is a throw-away local server started as the tests start it
(Debian's postgresql binaries, tests/support/_postgres.py). Each writer is its own process, as
Dagster's multiprocess executor runs steps. Peak RSS is the largest of this process and its writers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]


def _writer(db: str, url: str | None, worker: int, n: int) -> None:
    from sthelar_platform.core.lineage import LineageStore

    store = LineageStore(db, url=url)
    for i in range(n):
        store.record("materializations", {"run_id": f"w{worker}", "asset_key": "xenium_slide",
                                          "partition_key": f"s{i}", "status": "success", "data_version": f"{worker}-{i}"})


def _measure(db: Path, url: str | None, writers: int, rows: int, bulk: int) -> dict:
    from sthelar_platform.core.lineage import LineageStore

    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    procs = [ctx.Process(target=_writer, args=(str(db), url, w, rows)) for w in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a writer failed ({p.exitcode})")
    single_s = time.perf_counter() - t0
    store = LineageStore(db, url=url)
    patch_rows = [{"run_id": "bench", "slide_id": f"s{i % 30}", "magnification": "40x", "patch_id": f"p{i}", "x0": i,
                   "y0": i, "n_nuclei": 40, "dice": 0.8, "jaccard": 0.7, "bpq": 0.6, "det_f1": 0.9, "flagged": False}
                  for i in range(bulk)]
    t0 = time.perf_counter()
    store.record_many("patch_qc", patch_rows)
    bulk_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.snapshot(db.parent / "snapshot.duckdb")
    snapshot_s = time.perf_counter() - t0
    n = store.query("SELECT count(*) AS n FROM materializations")[0]["n"]
    assert n == writers * rows, (n, writers * rows)
    return {"single_row_records": writers * rows, "single_row_s": round(single_s, 2),
            "single_rows_per_s": round(writers * rows / single_s, 1), "bulk_rows": bulk, "bulk_s": round(bulk_s, 2),
            "bulk_rows_per_s": round(bulk / bulk_s), "snapshot_s": round(snapshot_s, 2)}


def main(argv: list[str] | None = None) -> int:
    """Measure both backends; print a Markdown table and write JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--writers", type=int, default=4)
    p.add_argument("--rows", type=int, default=250)
    p.add_argument("--bulk", type=int, default=100_000)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    from _postgres import fresh_database, postgres_server

    results = []
    with tempfile.TemporaryDirectory(prefix="lineage_bench_") as tmp, postgres_server() as server:
        for backend in ("duckdb", "postgres"):
            url = fresh_database(server) if backend == "postgres" else None
            row = _measure(Path(tmp) / backend / "lineage.duckdb", url, args.writers, args.rows, args.bulk)
            results.append({"backend": backend, **row})
    peak_mb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    print("| backend | single-row records/s (4 writers) | bulk patch_qc rows/s | snapshot s |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['backend']} | {r['single_rows_per_s']} | {r['bulk_rows_per_s']} | {r['snapshot_s']} |")
    report = {"benchmark": "lineage_backends", "writers": args.writers, "rows_per_writer": args.rows,
              "peak_rss_mb": round(peak_mb), "results": results}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
