"""Benchmark harness: each stage in a fresh process, wall time, throughput and peak RSS as JSON.

Writes ``$STHELAR_HOME/bench/<stage>.json``. The bench slide is generated once and reused.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sthelar_platform.core.atomic import atomic_dir, write_text_atomic
from sthelar_platform.core.paths import StorageLayout


def _stage_synth(data: Path, size: str, seed: int) -> dict[str, Any]:
    from sthelar_platform.core.config import load_categories, load_synthetic
    from sthelar_platform.synth import synthesize_cohort

    manifest = synthesize_cohort(data, size, load_synthetic(), load_categories(), seed=seed)
    facts = _slide_facts(data)
    return {"manifest": str(manifest), **facts, "_work": facts["n_cells"], "_unit": "cells/s"}


def _slide_facts(data: Path) -> dict[str, int]:
    """Cells, panel genes and transcripts of the size's slides (from the bundles as written)."""
    import polars as pl

    truth = pl.concat([pl.read_parquet(p, columns=["cell_id"]) for p in sorted(data.glob("slides/*/truth/cells.parquet"))])
    tx = sum(pl.scan_parquet(p).select(pl.len()).collect().item() for p in data.glob("slides/*/xenium/transcripts.parquet"))
    genes = max(json.loads(p.read_text())["panel_num_targets_predesigned"] for p in data.glob("slides/*/xenium/experiment.xenium"))
    return {"n_cells": truth.height, "n_genes": genes, "n_transcripts": tx}


def _stage_ingest(data: Path, size: str, seed: int) -> dict[str, Any]:
    from sthelar_platform.core.config import load_config
    from sthelar_platform.ingest.he_image import ingest_he
    from sthelar_platform.ingest.manifest import load_manifest
    from sthelar_platform.ingest.xenium import ingest_xenium

    spec = load_manifest(data / "manifest.yaml")[0]
    pipeline = load_config("pipeline")
    out = data.parent / "ingest_out"
    t0 = time.perf_counter()
    with atomic_dir(out / "xenium_slide") as tmp:
        s = ingest_xenium(spec.xenium_dir, tmp, pipeline.ingest)
    t_x = time.perf_counter() - t0
    with atomic_dir(out / "he_image") as tmp:
        h = ingest_he(spec.he_image, tmp, pipeline.he_image.magnification_um_per_px)
    return {"n_cells": s.n_cells, "n_transcripts": s.n_transcripts, "xenium_s": round(t_x, 2),
            "he_s": round(time.perf_counter() - t0 - t_x, 2), "he_px": [h.width, h.height],
            "morphology_px": s.morphology_levels[0], "_work": s.n_transcripts, "_unit": "transcripts/s"}


def _ingested(data: Path) -> Path:
    out = data.parent / "ingest_out"
    if not (out / "xenium_slide" / "summary.json").exists() or not (out / "he_image" / "summary.json").exists():
        raise RuntimeError("run the ingest benchmark stage first (sthelar bench --stage ingest)")
    return out


def _stage_registration(data: Path, size: str, seed: int) -> dict[str, Any]:
    """The he_registration stage in automatic mode (no CSV), scored against the true transform."""
    import numpy as np
    import polars as pl

    from sthelar_platform.core.config import load_config
    from sthelar_platform.ingest.manifest import load_manifest
    from sthelar_platform.registration import transform as reg
    from sthelar_platform.registration.slide import register_slide

    spec = load_manifest(data / "manifest.yaml")[0]
    ingested = _ingested(data)
    pipeline = load_config("pipeline")
    cfg = pipeline.registration
    with atomic_dir(data.parent / "registration_out") as tmp:
        r = register_slide(ingested / "xenium_slide", ingested / "he_image", None, tmp, cfg,
                           pipeline.he_image.magnification_um_per_px)
    truth = reg.read_alignment_csv(spec.alignment_csv)
    cells = pl.read_parquet(spec.xenium_dir.parent / "truth" / "cells.parquet", columns=["x_um", "y_um"]).to_numpy()
    err = reg.transform_error_um(np.array(r.qc.transform), truth, reg.apply(np.linalg.inv(truth), cells / 0.2125), 0.2125)
    return {"source": r.qc.source, "n_he_nuclei": r.qc.n_he_nuclei, "n_xenium_nuclei": r.qc.n_xenium_nuclei,
            "median_residual_um": round(r.qc.median_residual_um, 3), "p90_residual_um": round(r.qc.p90_residual_um, 3),
            "matched_fraction": round(r.qc.matched_fraction, 4), "passed": r.passed,
            "median_error_vs_truth_um": round(float(np.median(err)), 3),
            "p90_error_vs_truth_um": round(float(np.percentile(err, 90)), 3),
            "_work": r.qc.n_xenium_nuclei, "_unit": "nuclei/s"}


def _stage_registered_he(data: Path, size: str, seed: int) -> dict[str, Any]:
    """Writing the whole H&E pyramid into the SpatialData zarr (streamed through dask)."""
    import numpy as np

    from sthelar_platform.registration.registered_he import write_registered_he
    from sthelar_platform.registration.slide import SlideRegistration

    ingested = _ingested(data)
    reg_dir = data.parent / "registration_out"
    if not (reg_dir / "registration.json").exists():
        raise RuntimeError("run the registration benchmark stage first")
    r = SlideRegistration.read(reg_dir / "registration.json")
    he = ingested / "he_image" / "he_image.ome.tif"
    with atomic_dir(data.parent / "registered_he_out") as tmp:
        info = write_registered_he(he, np.array(r.qc.transform), ingested / "xenium_slide" / "nucleus_boundaries.parquet",
                                   r.morphology_pixel_size_um, tmp)
    h, w = info["levels"][0]
    return {"he_px": [w, h], "levels": len(info["levels"]), "_work": h * w / 1e6, "_unit": "megapixels/s"}


def _stage_counts(data: Path, size: str, seed: int) -> dict[str, Any]:
    """Nucleus + cell + cytoplasm count tables from the ingested transcripts (one polars pass)."""
    from sthelar_platform.annotation.counts import slide_count_tables
    from sthelar_platform.core.config import load_config

    tables = slide_count_tables(_ingested(data) / "xenium_slide", load_config("annotation")["counts"]["qv_min"])
    cell = tables["cell"]
    return {"n_cells": int(cell.n_obs), "n_genes": int(cell.n_vars), "n_counted": int(cell.X.sum()),
            "_work": int(cell.X.sum()), "_unit": "transcripts/s"}


ANNOTATION_STEPS = ("nucleus_counts", "cell_counts", "tangram_labels", "clusters", "cell_types")


def _annotation_step(data: Path, name: str) -> None:
    """One annotation asset's work, as the asset does it (run in its own process for its own peak RSS)."""
    from sthelar_platform.annotation import stages as st
    from sthelar_platform.annotation.references import reference_spec
    from sthelar_platform.core.config import load_categories, load_config, overrides_dir
    from sthelar_platform.ingest.manifest import load_manifest

    spec = load_manifest(data / "manifest.yaml")[0]
    cfg, cats = load_config("annotation"), load_categories()
    xen = _ingested(data) / "xenium_slide"
    dirs = {k: data.parent / "annotation_out" / k for k in ANNOTATION_STEPS}
    ref = reference_spec(spec.tissue, data / "references", cfg.references, spec.reference)
    with atomic_dir(dirs[name]) as o:
        if name in ("nucleus_counts", "cell_counts"):
            st.write_counts(name, xen, o, cfg)
        elif name == "tangram_labels":
            st.write_tangram_labels(dirs["cell_counts"], dirs["nucleus_counts"], ref, o, cfg, cats)
        elif name == "clusters":
            st.write_clusters(dirs["cell_counts"], o, cfg, cats.less10_max_transcripts)
        else:
            st.write_cell_types(spec.slide_id, xen, dirs["cell_counts"], dirs["tangram_labels"], dirs["clusters"], o,
                                cfg, cats, overrides_dir())


def _stage_annotation(data: Path, size: str, seed: int) -> dict[str, Any]:
    """The whole annotation chain (counts, Tangram x2, clusters, rule + cross-check), each asset in its own process."""
    import polars as pl

    from sthelar_platform.ingest.manifest import load_manifest

    spec = load_manifest(data / "manifest.yaml")[0]
    steps: dict[str, float] = {}
    peaks: dict[str, float] = {}
    for name in ANNOTATION_STEPS:
        res = _spawn("_annotation_step", data, name)
        steps[name], peaks[name] = round(res["wall_s"], 1), round(res["peak_rss_mb"], 1)
    work = data.parent / "annotation_out"
    labels = pl.read_parquet(work / "cell_types" / "cell_labels.parquet", columns=["cell_id", "category"])
    truth = pl.read_parquet(spec.xenium_dir.parent / "truth" / "cells.parquet", columns=["cell_id", "category"])
    j = labels.join(truth, on="cell_id", suffix="_true")
    acc = float((j["category"] == j["category_true"]).mean())
    summary = json.loads((work / "cell_types" / "summary.json").read_text())
    tangram = json.loads((work / "tangram_labels" / "summary.json").read_text())
    return {"n_cells": labels.height, "step_seconds": steps, "step_peak_rss_mb": peaks,
            "n_shared_genes": tangram["n_shared_genes"], "n_tangram_training_genes": tangram["n_training_genes"],
            "accuracy_vs_truth": round(acc, 4),
            "crosscheck_agreement": round(summary["crosscheck_agreement"], 4), "n_clusters": summary["n_clusters"],
            "n_flagged_clusters": summary["n_flagged_clusters"], "_work": labels.height, "_unit": "cells/s"}


def _stage_patches(data: Path, size: str, seed: int) -> dict[str, Any]:
    """40x patches + masks + PNG/npz export (the throughput target), then 20x, from the bench outputs."""
    from sthelar_platform.core.config import load_categories, load_config
    from sthelar_platform.ingest.manifest import load_manifest
    from sthelar_platform.registration.slide import SlideRegistration
    from sthelar_platform.tiling.patches import write_patches

    spec = load_manifest(data / "manifest.yaml")[0]
    ingested = _ingested(data)
    labels = data.parent / "annotation_out" / "cell_types" / "cell_labels.parquet"
    if not labels.exists():
        raise RuntimeError("run the registration and annotation benchmark stages first")
    r = SlideRegistration.read(data.parent / "registration_out" / "registration.json")
    cfg = load_config("tiling")
    out: dict[str, Any] = {}
    for mag in ("40x", "20x"):
        t0 = time.perf_counter()
        with atomic_dir(data.parent / f"patches_{mag}_out") as tmp:
            s = write_patches(spec.slide_id, spec.tissue, ingested / "he_image" / "he_image.ome.tif",
                              ingested / "xenium_slide" / "nucleus_boundaries.parquet", labels, r.he_px_to_um,
                              r.implied_he_pixel_size_um, mag, tmp, cfg, load_categories())
        dt = time.perf_counter() - t0
        out[mag] = {"n_patches": s["n_patches"], "n_tissue": s["n_tissue"], "seconds": round(dt, 1),
                    "patches_per_s": round(s["n_patches"] / dt, 1), "level_shape": s["level_shape"]}
    return {**out, "_work": out["40x"]["n_patches"] + out["20x"]["n_patches"],
            "_unit": "patches/s (40x and 20x together; each in inputs.<mag>.patches_per_s)"}


def _patch_dirs(data: Path) -> dict[str, Path]:
    dirs = {mag: data.parent / f"patches_{mag}_out" for mag in ("40x", "20x")}
    if not all((d / "patches.parquet").exists() for d in dirs.values()):
        raise RuntimeError("run the patches benchmark stage first")
    return dirs


def _stage_reference_segmentation(data: Path, size: str, seed: int) -> dict[str, Any]:
    """The configured H&E segmenter over every 40x and 20x patch, as the asset runs it."""
    from sthelar_platform.core.config import load_config
    from sthelar_platform.tiling.reference_segmentation import make_segmenter, segment_patches

    cfg = load_config("tiling")
    out: dict[str, Any] = {}
    with atomic_dir(data.parent / "reference_segmentation_out") as tmp:
        segmenter = make_segmenter(cfg["reference_segmentation"])
        for mag, pdir in _patch_dirs(data).items():
            t0 = time.perf_counter()
            s = segment_patches(pdir, tmp / mag, segmenter, int(cfg["patches"]["label_compression"]),
                                int(cfg["patches"]["workers"]))
            dt = time.perf_counter() - t0
            out[mag] = {"n_patches": s["n_patches"], "n_ref_nuclei": s["n_ref_nuclei"], "seconds": round(dt, 1),
                        "patches_per_s": round(s["n_patches"] / max(dt, 1e-9), 1)}
    return {**out, "_work": sum(v["n_patches"] for v in out.values()), "_unit": "patches/s (40x and 20x together)"}


def _stage_agreement(data: Path, size: str, seed: int) -> dict[str, Any]:
    """Agreement per patch: the metric alone on 40x (arrays in memory, one thread), then the asset's work end to
    end (both magnifications, agreement.parquet written).
    """
    import numpy as np
    import pandas as pd

    from sthelar_platform.core.config import load_config
    from sthelar_platform.tiling.agreement import distribution_summary, patch_agreement, slide_agreement
    from sthelar_platform.tiling.patches import load_labels

    cfg = load_config("tiling")
    acfg = cfg["agreement"]
    dirs, ref = _patch_dirs(data), data.parent / "reference_segmentation_out"
    names = pd.read_parquet(dirs["40x"] / "patches.parquet", columns=["name"])["name"].tolist()[:500]  # in memory: small
    pairs = [(load_labels(dirs["40x"] / "labels" / f"{n}.npz")["inst_map"], load_labels(ref / "40x" / f"{n}.npz")["inst_map"])
             for n in names]
    t0 = time.perf_counter()
    for t, p in pairs:
        patch_agreement(t, p, acfg["detection_radius_px"]["40x"], acfg["match_iou"])
    metric_ms = (time.perf_counter() - t0) / max(len(pairs), 1) * 1000
    t0 = time.perf_counter()
    frames = [slide_agreement(pdir, ref / mag, acfg["detection_radius_px"][mag], acfg["match_iou"],
                              acfg["flag_below_jaccard"], int(cfg["patches"]["workers"]),
                              focus_ratio_below=acfg["flag_focus_ratio_below"], ink_above=acfg["flag_ink_above"])
              for mag, pdir in dirs.items()]
    end_to_end = time.perf_counter() - t0
    with atomic_dir(data.parent / "agreement_out") as tmp:
        pd.concat(frames, ignore_index=True).to_parquet(tmp / "agreement.parquet")
    n = sum(len(f) for f in frames)
    dist = distribution_summary(frames[0])
    return {"metric_ms_per_patch_40x": round(metric_ms, 3), "metric_sample": len(pairs),
            "end_to_end_ms_per_patch": round(end_to_end / max(n, 1) * 1000, 3), "n_patches": n,
            "median_40x": {m: dist[m].get("median") for m in ("dice", "jaccard", "bpq", "det_f1")},
            "frac_flagged_40x": round(dist["frac_flagged"], 4),
            "nan_count": int(sum(np.isnan(f["jaccard"]).sum() for f in frames)), "_work": n, "_unit": "patches/s"}


def _stage_export(data: Path, size: str, seed: int) -> dict[str, Any]:
    """slide_export: CellViT folders and PanNuke arrays per magnification and grouping, and sdata.zarr."""
    import shutil

    import pandas as pd

    from sthelar_platform.core.config import load_categories, load_config
    from sthelar_platform.ingest.manifest import load_manifest
    from sthelar_platform.registration.slide import SlideRegistration
    from sthelar_platform.tiling.exports import write_slide_export

    spec = load_manifest(data / "manifest.yaml")[0]
    root = data.parent
    dirs = {"xenium_slide": _ingested(data) / "xenium_slide", "registered_he": root / "registered_he_out",
            "cell_counts": root / "annotation_out" / "cell_counts", "cell_types": root / "annotation_out" / "cell_types",
            **{f"patches_{m}": d for m, d in _patch_dirs(data).items()}, "segmentation_agreement": root / "agreement_out"}
    r = SlideRegistration.read(root / "registration_out" / "registration.json")
    cfg, cats = load_config("tiling"), load_categories()
    # PanNuke arrays are dense (every patch x 256 x 256 x classes + 1): on a Prime 5K slide they can
    # outgrow the disk, which the stage would report as a full disk; measure the rest and say so
    need = sum(len(pd.read_parquet(d / "patches.parquet", columns=["name"])) * 256 * 256
               * (3 + sum(len(g.classes) + 1 for g in cats.groupings.values())) for d in _patch_dirs(data).values())
    free = shutil.disk_usage(root).free
    pannuke_note = None
    if cfg.exports.pannuke and need > 0.8 * free:
        pannuke_note = f"skipped here: PanNuke arrays need up to {need / 1e9:.0f} GB, {free / 1e9:.0f} GB free"
        cfg = cfg.model_copy(update={"exports": cfg.exports.model_copy(update={"pannuke": False})})
    with atomic_dir(root / "export_out") as tmp:
        s = write_slide_export(spec.slide_id, dirs, r.morphology_pixel_size_um, tmp, cfg, cats)
    n = sum(s["cellvit"].values())
    return {"cellvit": s["cellvit"], "pannuke": pannuke_note or s["pannuke"], "pannuke_bytes_upper_bound": need,
            "_work": n, "_unit": "patches/s (every magnification and grouping)"}


STAGES: dict[str, Callable[[Path, str, int], dict[str, Any]]] = {
    "synth": _stage_synth, "ingest": _stage_ingest, "registration": _stage_registration,
    "registered_he": _stage_registered_he, "counts": _stage_counts, "annotation": _stage_annotation,
    "patches": _stage_patches, "reference_segmentation": _stage_reference_segmentation, "agreement": _stage_agreement,
    "export": _stage_export,
}


def _child(fn_name: str, args: tuple, queue) -> None:
    t0 = time.perf_counter()
    try:
        fn = STAGES[fn_name] if fn_name in STAGES else globals()[fn_name]
        res = fn(*args) or {}
        res["wall_s"] = time.perf_counter() - t0
        # a stage that runs its steps in processes of their own peaks in the largest of them
        res["peak_rss_mb"] = max(resource.getrusage(who).ru_maxrss for who in
                                 (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
        queue.put(("ok", res))
    except BaseException as exc:  # report, do not hang the parent
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def _spawn(fn_name: str, *args) -> dict[str, Any]:
    """Run a stage (or a step of one) in a fresh spawned process: its own peak RSS, and a crash stays contained."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(fn_name, args, q))
    p.start()
    status, res = q.get()
    p.join()
    if status != "ok":
        raise RuntimeError(f"benchmark {fn_name} {args[1:] if fn_name not in STAGES else ''} failed: {res}")
    return res


def run_stage(name: str, data: Path, size: str, seed: int) -> dict[str, Any]:
    """Run one benchmark stage in a fresh spawned process."""
    return _spawn(name, Path(data), size, seed)


def run_benchmarks(layout: StorageLayout, size: str = "bench", stages: list[str] | None = None, seed: int = 0) -> list[dict]:
    """Run the named stages (default all) on the size's SYNTHETIC slide; one JSON per stage."""
    data = layout.bench / f"data_{size}"
    layout.bench.mkdir(parents=True, exist_ok=True)
    todo = stages or list(STAGES)
    results = []
    for name in todo:
        if name == "synth" and (data / "manifest.yaml").exists():
            continue  # generated once, reused
        if name != "synth" and not (data / "manifest.yaml").exists():
            results.append(_report(layout, "synth", size, run_stage("synth", data, size, seed)))
        res = run_stage(name, data, size, seed)
        results.append(_report(layout, name, size, res))
        write_size_summary(layout, size)
    return results


def write_size_summary(layout: StorageLayout, size: str) -> Path:
    """``<bench>/<size>.json``: every stage JSON of this size, the slide's facts and each stage's command."""
    stages = {}
    for path in sorted(layout.bench.glob("*.json")):
        res = json.loads(path.read_text())
        if res.get("size") == size and "stage" in res:
            name = res.pop("stage")
            res.setdefault("command", _command(layout, size, name))
            stages[name] = {k: v for k, v in res.items() if k not in ("size", "machine")}
    summary = {"size": size, "slide": _slide_facts(layout.bench / f"data_{size}"),
               "machine": {"cpus": mp.cpu_count(), "python": platform.python_version()},
               "stages": {name: stages[name] for name in STAGES if name in stages}}
    out = layout.bench / "summaries" / f"{size}.json"
    out.parent.mkdir(exist_ok=True)
    write_text_atomic(out, json.dumps(summary, indent=2))
    return out


def _command(layout: StorageLayout, size: str, stage: str) -> str:
    return f"sthelar --home {layout.root} bench --size {size} --stage {stage}"


def _report(layout: StorageLayout, name: str, size: str, res: dict[str, Any]) -> dict[str, Any]:
    work = res.pop("_work", None)
    unit = res.pop("_unit", "runs/s")
    out = {"stage": name, "size": size, "command": _command(layout, size, name), "wall_s": round(res.pop("wall_s"), 2),
           "throughput_unit": unit, "peak_rss_mb": round(res.pop("peak_rss_mb"), 1), "inputs": res,
           "machine": {"cpus": mp.cpu_count(), "python": platform.python_version()}}
    out["throughput"] = round((work or 1) / max(out["wall_s"], 1e-9), 2)
    write_text_atomic(layout.bench / f"{name}.json", json.dumps(out, indent=2))
    return out
