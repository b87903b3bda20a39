"""The QC dashboard: a self-contained static site rendered from the dbt_qc marts.

One cohort page and one page per slide, in the spirit of MultiQC and the Xenium web summary.
Plots are Plotly, served from the site's own ``assets/`` (works offline); figures already made
by the pipeline (registration overlay, residual map) are linked in, not recomputed. The site
is written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import jinja2
import numpy as np
import polars as pl

from sthelar_platform.core.atomic import atomic_dir, link_or_copy
from sthelar_platform.core.errors import InputError
from sthelar_platform.core.ids import validate_slide_id
from sthelar_platform.core.lineage import LineageStore
from sthelar_platform.core.paths import StorageLayout
from sthelar_platform.qc.dbt_project import summarize_run_results

TEMPLATES = Path(__file__).parent / "templates"
MAX_MAP_POINTS = 20_000


def plotly_js() -> Path:
    """The plotly.min.js shipped inside the plotly package (served by the site, no CDN)."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.exists():
        raise InputError(path, "plotly.min.js is missing from the plotly package", "reinstall plotly (make setup)")
    return path


def _fmt(v: Any, digits: int = 2) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _pct(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _fmt_int(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{int(v):,}"


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined)
    env.globals.update(fmt=_fmt, pct=_pct, fmt_int=_fmt_int)
    return env


def _json(data: Any) -> str:
    """JSON for a <script type="application/json"> block (NaN -> null, '</' escaped)."""
    def clean(o: Any) -> Any:
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [clean(v) for v in o]
        return o
    return json.dumps(clean(data), separators=(",", ":"), default=str).replace("</", "<\\/")


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def dbt_status(run_results: Path | None) -> dict[str, Any]:
    """The dbt tests' outcome for the pages; a missing file is shown, never a crash."""
    if run_results is None or not run_results.exists():
        return {"missing": True, "problems": [], "n_tests": 0, "n_failed": 0, "generated_at": None}
    s = summarize_run_results(run_results)
    tests = [p for p in s["problems"] if p["kind"] == "test"]
    return {"missing": False, "problems": s["problems"], "n_tests": s["n_tests"],
            "n_failed": len(tests), "generated_at": s["generated_at"]}


def category_agreement(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per final category: the centroid cross-check's and SingleR's agreement (from annotation_qc's JSON)."""
    if not rows:
        return []
    centroid = json.loads(rows[0].get("crosscheck_by_category") or "{}")
    singler = json.loads(rows[0].get("singler_by_category") or "{}")
    return [{"category": c, "centroid": centroid.get(c), "singler": singler.get(c)}
            for c in sorted(set(centroid) | set(singler))]


def slide_warnings(s: dict[str, Any], thresholds: dict[str, float]) -> list[str]:
    """Sentences for every threshold a slide misses (shown on its page and the cohort page)."""
    out = []
    sid = s["slide_id"]
    if s.get("registration_passed") is False:
        out.append(f"{sid}: registration failed ({s.get('registration_failures') or 'see he_registration'})")
    if s.get("annotation_passed") is False:
        out.append(f"{sid}: annotation failed its checks (Unknown {_pct(s.get('frac_unknown'))}, "
                   f"cross-check {_pct(s.get('crosscheck_agreement'))})")
    for mag in ("40x", "20x"):
        f = s.get(f"frac_flagged_{mag}")
        if f is not None and f > thresholds["max_frac_flagged"]:
            out.append(f"{sid}: {_pct(f)} of {mag} patches flagged (> {_pct(thresholds['max_frac_flagged'])})")
    if s.get("n_failed_materializations"):
        out.append(f"{sid}: {s['n_failed_materializations']} failed materialization(s) in its history")
    if s.get("qc_status") == "incomplete":
        out.append(f"{sid}: QC incomplete (a stage has not run yet)")
    return out


def patch_grid(patches: dict[str, np.ndarray]) -> dict[str, Any]:
    """Patches on their regular grid as a heat map (Jaccard per cell, null where no patch).

    One image instead of a marker per patch: a 20k-patch slide draws in a few milliseconds.
    """
    x0, y0 = patches["x0"].astype(np.int64), patches["y0"].astype(np.int64)
    if not len(x0):
        return {"z": [], "x": [], "y": [], "n": 0}
    steps = np.r_[np.diff(np.unique(x0)), np.diff(np.unique(y0))]
    stride = int(np.gcd.reduce(steps[steps > 0])) if (steps > 0).any() else 1
    col, row = (x0 - x0.min()) // stride, (y0 - y0.min()) // stride
    z = np.full((int(row.max()) + 1, int(col.max()) + 1), np.nan)
    z[row, col] = patches["jaccard"]
    return {"z": [[None if np.isnan(v) else round(float(v), 3) for v in r] for r in z],
            "x": (x0.min() + stride * np.arange(z.shape[1])).tolist(),
            "y": (y0.min() + stride * np.arange(z.shape[0])).tolist(), "n": int(len(x0))}


def metric_histograms(patches: dict[str, np.ndarray], bins: int = 40) -> dict[str, Any]:
    """Counts per bin of [0, 1] for each agreement metric (NaN = undefined patches left out)."""
    edges = np.linspace(0, 1, bins + 1)
    out = {"centers": np.round((edges[:-1] + edges[1:]) / 2, 4).tolist(), "counts": {}}
    for m in ("dice", "jaccard", "bpq", "det_f1"):
        v = np.asarray(patches[m], float)
        out["counts"][m] = np.histogram(v[np.isfinite(v)], edges)[0].tolist()
    return out


def _cell_map(layout: StorageLayout, slide_id: str) -> tuple[dict[str, dict[str, list]], bool, bool]:
    """Cell centroids by category, at most MAX_MAP_POINTS (an even sample); (map, sampled, present)."""
    labels = layout.stage_dir("cell_types", slide_id) / "cell_labels.parquet"
    cells = layout.stage_dir("xenium_slide", slide_id) / "cells.parquet"
    if not labels.exists() or not cells.exists():
        return {}, False, False
    df = (pl.scan_parquet(cells).select("cell_id", "x_centroid", "y_centroid")
          .join(pl.scan_parquet(labels).select("cell_id", "category"), on="cell_id").collect())
    sampled = df.height > MAX_MAP_POINTS
    if sampled:
        df = df.gather_every(int(math.ceil(df.height / MAX_MAP_POINTS)))
    out = {}
    for (cat,), part in df.group_by("category", maintain_order=False):
        out[str(cat)] = {"x": np.round(part["x_centroid"].to_numpy(), 1).tolist(),
                         "y": np.round(part["y_centroid"].to_numpy(), 1).tolist()}
    return dict(sorted(out.items())), sampled, True


def _composition(slides: list[dict[str, Any]]) -> dict[str, Any]:
    comps = {s["slide_id"]: json.loads(s["composition"]) if s.get("composition") else {} for s in slides}
    cats = sorted({c for v in comps.values() for c in v})
    frac = {}
    for sid, comp in comps.items():
        total = sum(comp.values()) or 1
        frac[sid] = {c: comp.get(c, 0) / total for c in cats}
    return {"slides": list(comps), "categories": {c: {sid: frac[sid][c] for sid in comps} for c in cats}}


def build_dashboard(qc_db: Path, layout: StorageLayout, out_dir: Path, run_results: Path | None,
                    thresholds: dict[str, float], progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Render the site into ``out_dir`` (replaced atomically); returns counts and timings."""
    if not qc_db.exists():
        raise InputError(qc_db, "no QC database", "materialize the dbt models (asset group 'qc') first")
    t0 = time.perf_counter()
    env = _env()
    con = duckdb.connect(str(qc_db), read_only=True)
    try:
        slides = _rows(con, "SELECT * FROM main.slide_summary ORDER BY slide_id")
        models = _rows(con, "SELECT * FROM main.model_leaderboard ORDER BY grouping, rank_in_grouping")
        loss = _rows(con, "SELECT model_key, epoch, val_loss, recorded_at FROM staging.stg_model_training ORDER BY model_key, recorded_at")
        dbt = dbt_status(run_results)
        warnings = [w for s in slides for w in slide_warnings(s, thresholds)]
        warnings += [f"dbt test {p['name']} failed ({p['failures']} rows)" for p in dbt["problems"] if p["kind"] == "test"]
        quarantined = LineageStore(layout.lineage_db).quarantined()
        if quarantined:  # lineage rows set aside, not lost: an operator fixes and moves them back
            warnings.append(f"{len(quarantined)} lineage spool file(s) quarantined in "
                            f"{LineageStore(layout.lineage_db).quarantine}")
            warnings += [f"quarantined {q['file']}: {q['reason']}" for q in quarantined]
        common = {"built_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "qc_db": str(qc_db),
                  "synthetic": any(s.get("synthetic") for s in slides)}
        with atomic_dir(out_dir) as tmp:
            (tmp / "assets").mkdir()
            (tmp / "assets").mkdir(parents=True, exist_ok=True)
            link_or_copy(plotly_js(), tmp / "assets" / "plotly.min.js")
            for name in ("style.css", "dashboard.js"):
                shutil.copyfile(TEMPLATES / name, tmp / "assets" / name)
            curves: dict[str, dict[str, list]] = {}
            for r in loss:  # latest run per model key wins (rows are in time order)
                c = curves.setdefault(r["model_key"], {"epoch": [], "val_loss": []})
                if r["epoch"] in c["epoch"]:
                    i = c["epoch"].index(r["epoch"])
                    c["val_loss"][i] = r["val_loss"]
                else:
                    c["epoch"].append(r["epoch"])
                    c["val_loss"].append(r["val_loss"])
            data = {"cohort": {"slide_id": [s["slide_id"] for s in slides],
                               "median_residual_um": [s["median_residual_um"] for s in slides],
                               "median_jaccard_40x": [s["median_jaccard_40x"] for s in slides],
                               "status": [s["qc_status"] for s in slides]},
                    "composition": _composition(slides),
                    "loss": [{"name": k, **v} for k, v in curves.items()]}
            (tmp / "index.html").write_text(env.get_template("index.html").render(
                **common, root="", title="Cohort overview", slides=slides, models=models, dbt=dbt, warnings=warnings,
                total_cells=int(sum(s["n_cells"] or 0 for s in slides)),
                total_patches=int(sum((s["n_patches_40x"] or 0) + (s["n_patches_20x"] or 0) for s in slides)),
                n_failing=sum(s["qc_status"] == "fail" for s in slides), data_json=_json(data)))
            slide_tpl = env.get_template("slide.html")
            (tmp / "slides").mkdir()
            for i, s in enumerate(slides):
                _slide_page(con, layout, s, tmp / "slides", slide_tpl, common, thresholds)
                if progress:
                    progress(i + 1, len(slides))
    finally:
        con.close()
    return {"n_slides": len(slides), "n_models": len(models), "n_warnings": len(warnings),
            "n_quarantined_lineage_files": len(quarantined),
            "dbt_tests": dbt["n_tests"], "dbt_failed": dbt["n_failed"], "build_s": round(time.perf_counter() - t0, 3)}


# Patches per magnification of one slide, flagged in all and for each reason (tiling.agreement.FLAG_REASONS).
PATCH_FLAG_COUNTS = """
    SELECT magnification, count(*) AS n_patches, count(*) FILTER (WHERE flagged) AS n_flagged,
           count(*) FILTER (WHERE list_contains(string_split(flag_reasons, ','), 'low_jaccard')) AS low_jaccard,
           count(*) FILTER (WHERE list_contains(string_split(flag_reasons, ','), 'out_of_focus')) AS out_of_focus,
           count(*) FILTER (WHERE list_contains(string_split(flag_reasons, ','), 'ink')) AS ink
    FROM main.patch_quality WHERE slide_id = ? GROUP BY magnification ORDER BY magnification DESC"""


def _slide_page(con: duckdb.DuckDBPyConnection, layout: StorageLayout, s: dict[str, Any], pages: Path,
                template: jinja2.Template, common: dict[str, Any], thresholds: dict[str, float]) -> None:
    sid = validate_slide_id(s["slide_id"])
    patches = con.execute("SELECT patch_id, x0, y0, dice, jaccard, bpq, det_f1 FROM main.patch_quality "
                          "WHERE slide_id = ? AND magnification = '40x' ORDER BY y0, x0", [sid]).fetchnumpy()
    review = _rows(con, "SELECT * FROM main.annotation_review WHERE slide_id = ? ORDER BY flagged DESC, n_cells DESC", [sid])
    flag_counts = _rows(con, PATCH_FLAG_COUNTS, [sid])
    lineage = _rows(con, "SELECT asset_key, code_version, data_version, finished_at, reference_sha256 "
                         "FROM main.output_lineage WHERE slide_id = ? ORDER BY finished_at", [sid])
    predictions = _rows(con, "SELECT * FROM staging.stg_prediction_agreement WHERE slide_id = ? ORDER BY class_name", [sid])
    agreement = category_agreement(_rows(con, "SELECT crosscheck_by_category, singler_by_category "
                                              "FROM staging.stg_annotation_qc WHERE slide_id = ?", [sid]))
    images = {}
    for key, src in (("overlay", layout.stage_dir("he_registration", sid) / "overlay.png"),
                     ("residual_map", layout.stage_dir("he_registration", sid) / "residual_map.png")):
        if src.exists():
            (pages / sid).mkdir(parents=True, exist_ok=True)
            link_or_copy(src, pages / sid / src.name)
            images[key] = f"{sid}/{src.name}"
    cell_map, sampled, has_cells = _cell_map(layout, sid)
    data = {"patch_grid": patch_grid(patches), "histograms": metric_histograms(patches),
            "composition": _composition([s]), "cell_map": cell_map, "cell_map_sampled": sampled}
    (pages / f"{sid}.html").write_text(template.render(
        **common, root="../", title=sid, s=s, warnings=slide_warnings(s, thresholds), images=images, review=review,
        lineage=lineage, predictions=predictions, agreement=agreement, has_cells=has_cells, flag_counts=flag_counts,
        flag_below_jaccard=thresholds["flag_below_jaccard"], flag_focus_ratio_below=thresholds["flag_focus_ratio_below"],
        flag_ink_above=thresholds["flag_ink_above"],
        data_json=_json(data)))
