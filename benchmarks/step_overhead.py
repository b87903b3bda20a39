"""Where a small slide's pipeline time goes: step processes starting against the assets' own compute.

Usage: python benchmarks/step_overhead.py [--code DIR ...] [--demo] [--imports] [--out FILE.json]

For each code checkout given (default: this one; give an older checkout to compare, e.g. a `git worktree`),
in a fresh home: register the tiny SYNTHETIC slide (one cohort, generated once, shared by every checkout)
and time `sthelar materialize --slide tiny` as a user runs it, in a subprocess. From that run's Dagster event
log: the number of step processes, each step's start-up (its process launched -> its step started, i.e.
interpreter, imports and definitions), and the assets' own compute time (the ``wall_s`` each materialization
records). With ``--demo`` the checkouts also run `sthelar demo` on an empty home each: its wall time and
each job's (slide pipelines, training, predictions, QC). ``--imports`` times, in fresh interpreters, the
definitions' load and each asset's library stage: what a step paid before its server preloaded them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import emit, peak_rss_mb  # noqa: E402


def _cli(code: Path, home: Path, *args: str, timeout: int = 3600) -> tuple[float, subprocess.CompletedProcess]:
    """`sthelar ARGS` from the checkout ``code`` (its own packages first on the path), timed."""
    env = {**os.environ, "PYTHONPATH": str(code), "STHELAR_HOME": str(home), "DBT_SEND_ANONYMOUS_USAGE_STATS": "False"}
    env.pop("STHELAR_CONFIG_DIR", None)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "sthelar_cli", "--home", str(home), *args], cwd=code, env=env,
                         capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"sthelar {' '.join(args)} failed in {code}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return wall, res


def _run_facts(home: Path) -> list[dict]:
    """Per run of the home's Dagster instance: job, wall time, steps, per-step start-up, assets' compute."""
    from dagster import DagsterEventType, DagsterInstance

    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    out = []
    with DagsterInstance.get() as instance:
        for run in reversed(instance.get_runs()):
            events = [r for r in instance.all_logs(run.run_id) if r.dagster_event is not None]
            at = {}
            for r in events:
                at.setdefault((r.dagster_event.event_type, r.dagster_event.step_key), r.timestamp)  # type: ignore[union-attr]
            launched = {k[1]: t for k, t in at.items() if k[0] == DagsterEventType.STEP_WORKER_STARTING}
            started = {k[1]: t for k, t in at.items() if k[0] == DagsterEventType.STEP_START}
            startup = [started[s] - launched[s] for s in launched if s in started]
            compute = {}
            for r in events:
                if r.dagster_event.event_type == DagsterEventType.ASSET_MATERIALIZATION:  # type: ignore[union-attr]
                    m = r.dagster_event.event_specific_data.materialization  # type: ignore[union-attr]
                    if "wall_s" in m.metadata:
                        compute[m.asset_key.to_user_string()] = float(m.metadata["wall_s"].value)
            first = min(r.timestamp for r in events)
            last = max(r.timestamp for r in events)
            out.append({"job": run.job_name, "partition": run.tags.get("dagster/partition"),
                        "run_wall_s": round(last - first, 2), "step_processes": len(launched),
                        "steps": sorted(started), "startup_s_per_step": round(median(startup), 2) if startup else None,
                        "startup_s_total": round(sum(startup), 2), "assets_compute_s": round(sum(compute.values()), 2),
                        "asset_compute_s": {k: round(v, 2) for k, v in sorted(compute.items())}})
    return out


def _facts_in_child(home: Path, code: Path) -> list[dict]:
    """The event log read with this checkout's Dagster (the same for both), in a child: DAGSTER_HOME is per home."""
    script = (f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.step_overhead import _run_facts; "
              f"from pathlib import Path; print(json.dumps(_run_facts(Path({str(home)!r}))))")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def import_seconds(code: Path, module: str, repeats: int = 3) -> float:
    """Median seconds to import ``module`` in a fresh interpreter (what a step process without a warm server paid)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], cwd=code, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return round(median(times), 2)


def import_costs(code: Path) -> dict:
    """The definitions' load, and each asset's library stage alone (its code version's entry modules)."""
    script = ("import json, sthelar_definitions as d; from assets._runtime import CODE_VERSION_INPUTS as C; "
              "g = d.defs.resolve_asset_graph(); "
              "print(json.dumps({k.to_user_string(): C[g.get(k).code_version][0] for k in g.get_all_asset_keys() "
              "if g.get(k).code_version in C}))")
    res = subprocess.run([sys.executable, "-c", script], cwd=code, env={**os.environ, "PYTHONPATH": str(code)},
                         capture_output=True, text=True, check=True)
    entries = json.loads(res.stdout.strip().splitlines()[-1])
    stages = {a: import_seconds(code, ", ".join(mods)) for a, mods in sorted(entries.items())}
    return {"python_startup_s": import_seconds(code, "sys"), "definitions_s": import_seconds(code, "sthelar_definitions"),
            "stage_library_s": stages}


def tiny_slide(code: Path, cohort: Path, work: Path, name: str) -> dict:
    """The tiny slide's pipeline through `sthelar materialize`, in a fresh home, with its run's numbers."""
    home = work / f"home_{name}"
    _cli(code, home, "slides", "add", "--manifest", str(cohort / "manifest.yaml"))
    wall, _ = _cli(code, home, "materialize", "--slide", "tiny")
    runs = _facts_in_child(home, code)
    run = next(r for r in runs if r["job"] == "slide_pipeline")
    return {"code": str(code), "command": "sthelar materialize --slide tiny", "cli_wall_s": round(wall, 2), **run,
            "wall_over_compute": round(wall / max(run["assets_compute_s"], 1e-9), 2)}


def demo(code: Path, work: Path, name: str) -> dict:
    """`sthelar demo` on an empty home: its wall time and each job's runs, step processes and compute."""
    home = work / f"demo_{name}"
    wall, res = _cli(code, home, "demo", timeout=4 * 3600)
    runs = _facts_in_child(home, code)
    jobs: dict[str, dict] = {}
    for r in runs:
        j = jobs.setdefault(r["job"], {"runs": 0, "run_wall_s": 0.0, "assets_compute_s": 0.0, "step_processes": 0})
        j["runs"] += 1
        j["run_wall_s"] = round(j["run_wall_s"] + r["run_wall_s"], 2)
        j["assets_compute_s"] = round(j["assets_compute_s"] + r["assets_compute_s"], 2)
        j["step_processes"] += r["step_processes"]
    return {"code": str(code), "command": "sthelar demo", "wall_s": round(wall, 1), "jobs": jobs,
            "last_lines": res.stdout.strip().splitlines()[-14:]}


def main(argv: list[str] | None = None) -> int:
    """Time the tiny slide's pipeline (and optionally the demo) for each checkout; print / write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--code", type=Path, action="append", help="a checkout to run (default: this one); repeatable")
    p.add_argument("--demo", action="store_true", help="also run `sthelar demo` on an empty home per checkout")
    p.add_argument("--work", type=Path, help="scratch folder (default: a new temporary one)")
    p.add_argument("--imports", action="store_true", help="also time each stage's library import in a fresh process "
                   "(this checkout's definitions)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    codes = [c.resolve() for c in (args.code or [ROOT])]
    work = args.work or Path(tempfile.mkdtemp(prefix="step_overhead_"))
    cohort = work / "tiny_cohort"
    if not (cohort / "manifest.yaml").exists():
        _cli(ROOT, work / "synth_home", "synth", "--size", "tiny", "--out", str(cohort))
    report: dict = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "tiny_slide": [], "demo": []}
    for i, code in enumerate(codes):
        name = f"{i}_{code.name}"
        report["tiny_slide"].append(tiny_slide(code, cohort, work, name))
        if args.demo:
            report["demo"].append(demo(code, work, name))
    if args.imports:
        report["imports"] = import_costs(ROOT)
    report["peak_rss_mb"] = peak_rss_mb()
    return emit(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
