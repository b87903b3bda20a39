"""QC dashboard at cohort scale: 30 SYNTHETIC slides x 20k patches of generated QC rows.

Usage: python benchmarks/qc_dashboard.py [--slides 30] [--patches 20000] [--out FILE.json] [--no-browser]

Measures: writing the QC rows, the dbt build (qc_models through Dagster), the site build
(qc_dashboard), and in headless chromium the load time of the cohort page and every slide page
(navigation start to load event, and to all plots drawn). Prints and writes JSON with peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))

from benchmarks._report import peak_rss_mb  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Time qc_job and the dashboard pages on SYNTHETIC QC rows at cohort scale."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slides", type=int, default=30)
    p.add_argument("--patches", type=int, default=20_000)
    p.add_argument("--out", type=Path)
    p.add_argument("--no-browser", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "False")
    from dagster import DagsterInstance, materialize
    from synthetic_qc import write_synthetic_qc

    import sthelar_definitions
    from assets.qc.dashboard import dashboard_thresholds
    from sthelar_platform.core.paths import StorageLayout
    from sthelar_platform.qc.dashboard import build_dashboard
    from sthelar_platform.qc.dbt_project import qc_database, run_results_path

    home = Path(tempfile.mkdtemp(prefix="qc_bench_"))
    layout = StorageLayout.at(home)
    report: dict = {"benchmark": "qc_dashboard", "n_slides": args.slides, "patches_per_slide_40x": args.patches,
                    "home": str(home)}
    t0 = time.perf_counter()
    slides = write_synthetic_qc(layout.lineage_db, args.slides, args.patches)
    report["write_qc_rows_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    r = materialize(sthelar_definitions.QC_ASSETS, instance=DagsterInstance.ephemeral(),
                    resources=sthelar_definitions.build_resources(str(home)))
    report["qc_job_s"] = round(time.perf_counter() - t0, 2)  # dbt build + site, through Dagster
    dash = next(m for m in r.get_asset_materialization_events() if m.asset_key.to_user_string() == "qc_dashboard")
    report["site_build_in_job_s"] = dash.materialization.metadata["build_s"].value
    t0 = time.perf_counter()
    s = build_dashboard(qc_database(layout), layout, home / "rebuild", run_results_path(layout), dashboard_thresholds())
    report["site_build_s"] = round(time.perf_counter() - t0, 2)
    site = layout.dashboards / "site"
    sizes = sorted(p.stat().st_size for p in (site / "slides").glob("*.html"))
    report["slide_page_kb_median"] = round(sizes[len(sizes) // 2] / 1024, 1)
    report["n_pages"] = s["n_slides"] + 1
    if not args.no_browser:
        report["page_load"] = _page_loads(site, slides)
    report["peak_rss_mb"] = peak_rss_mb()
    report["peak_rss_children_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


def _page_loads(site: Path, slides: list[str]) -> dict:
    from _browser import chromium, console_errors, free_port, wait_for_http

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "-d", str(site)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    driver = chromium()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/index.html", 30, server)
        driver.get(f"{base}/index.html")  # warm the cache for plotly.min.js as a user's second page would
        times, drawn, errors = {}, {}, 0
        for name in ["index.html"] + [f"slides/{s}.html" for s in slides]:
            t0 = time.perf_counter()
            driver.get(f"{base}/{name}")
            while driver.execute_script("return document.querySelectorAll('.plot[data-rendered=true]').length") < (
                    1 if name == "index.html" else 3):
                if time.perf_counter() - t0 > 30:
                    raise RuntimeError(f"{name}: plots not drawn after 30 s: {console_errors(driver)}")
                time.sleep(0.01)
            drawn[name] = time.perf_counter() - t0
            times[name] = driver.execute_script(
                "const t = performance.getEntriesByType('navigation')[0]; return t.loadEventEnd - t.startTime;") / 1000
            errors += len(console_errors(driver))
        vals = sorted(drawn.values())
        return {"pages": len(times), "console_errors": errors, "load_event_s_max": round(max(times.values()), 3),
                "plots_drawn_s_median": round(vals[len(vals) // 2], 3), "plots_drawn_s_max": round(vals[-1], 3),
                "index_plots_drawn_s": round(drawn["index.html"], 3)}
    finally:
        driver.quit()
        server.terminate()


if __name__ == "__main__":
    sys.exit(main())
