"""`sthelar bench`: each stage's assets materialized on a size's SYNTHETIC slide, each asset in a fresh process.

The benchmark runs the platform's own assets (the library calls, atomic outputs, lineage and checks a run
has) in a platform home of its own, ``$STHELAR_HOME/bench/<size>/home/`` with the usual layout, so what it
measures is what a user runs. Per stage it writes ``bench/<size>/<stage>.json``: the assets' compute time
(their ``wall_s``), the work done per second, each asset's process peak RSS, and what the stage measured;
``bench/<size>/summary.json`` gathers every stage of that size with the slide's facts. Sizes never overwrite
each other.

The registration stage benchmarks the automatic search (the slide is registered without its alignment CSV),
the slowest path, and scores the result against the synthetic truth.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sthelar_platform.core.atomic import write_text_atomic
from sthelar_platform.core.paths import StorageLayout

Extras = Callable[[StorageLayout, str, dict[str, dict[str, Any]]], dict[str, Any]]


@dataclass(frozen=True)
class BenchStage:
    """A benchmark stage: the assets it materializes (in order) and how its work and findings are counted."""

    assets: tuple[str, ...]
    unit: str
    work: Callable[[dict[str, dict[str, Any]]], float]     # from the assets' metadata
    extras: Extras | None = None
    description: str = ""


@dataclass
class BenchRun:
    size: str
    bench: Path                                            # $STHELAR_HOME/bench/<size>
    seed: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def layout(self) -> StorageLayout:
        return StorageLayout.at(self.bench / "home")

    @property
    def config_dir(self) -> Path:
        return self.bench / "config"


# -- what each stage reports beyond time and memory ----------------------------------------------------------

def _slide_facts(layout: StorageLayout) -> dict[str, int]:
    """Cells, panel genes and transcripts of the size's slides (from the bundles as written)."""
    import polars as pl

    landing = layout.landing / "synthetic"
    truth = pl.concat([pl.read_parquet(p, columns=["cell_id"]) for p in sorted(landing.glob("slides/*/truth/cells.parquet"))])
    tx = sum(pl.scan_parquet(p).select(pl.len()).collect().item() for p in landing.glob("slides/*/xenium/transcripts.parquet"))
    genes = max(json.loads(p.read_text())["panel_num_targets_predesigned"]
                for p in landing.glob("slides/*/xenium/experiment.xenium"))
    return {"n_cells": truth.height, "n_genes": genes, "n_transcripts": tx}


def _ingest_extras(layout: StorageLayout, slide_id: str, meta: dict[str, dict[str, Any]]) -> dict[str, Any]:
    x, h = meta["xenium_slide"], meta["he_image"]
    return {"n_cells": x["n_cells"], "n_transcripts": x["n_transcripts"], "xenium_s": x["wall_s"], "he_s": h["wall_s"],
            "he_px": [h["width"], h["height"]], "morphology_px": x["morphology_levels"][0]}


def _registration_extras(layout: StorageLayout, slide_id: str, meta: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The automatic registration scored against the synthetic truth, in the ingested slide's own pixel size."""
    import numpy as np
    import polars as pl

    from sthelar_platform.ingest.manifest import SlideCatalog
    from sthelar_platform.registration import transform as reg
    from sthelar_platform.registration.slide import SlideRegistration

    r = SlideRegistration.of_folder(layout.stage_dir("he_registration", slide_id))
    spec = SlideCatalog(layout.catalog).get(slide_id)
    truth_dir = spec.xenium_dir.parent / "truth"
    truth = np.array(json.loads((truth_dir / "transform.json").read_text())["he_px_to_morphology_px"], float)
    morph_um = r.morphology_pixel_size_um
    cells = pl.read_parquet(truth_dir / "cells.parquet", columns=["x_um", "y_um"]).to_numpy()
    err = reg.transform_error_um(np.array(r.qc.transform), truth, reg.apply(np.linalg.inv(truth), cells / morph_um),
                                 morph_um)
    q = r.qc
    return {"source": q.source, "n_he_nuclei": q.n_he_nuclei, "n_xenium_nuclei": q.n_xenium_nuclei,
            "median_residual_um": round(q.median_residual_um, 3), "p90_residual_um": round(q.p90_residual_um, 3),
            "matched_fraction": round(q.matched_fraction, 4), "passed": r.passed,
            "median_error_vs_truth_um": round(float(np.median(err)), 3),
            "p90_error_vs_truth_um": round(float(np.percentile(err, 90)), 3)}


def _registered_he_extras(layout: StorageLayout, slide_id: str, meta: dict[str, dict[str, Any]]) -> dict[str, Any]:
    h, w = meta["registered_he"]["level_shapes"][0]
    return {"he_px": [w, h], "levels": len(meta["registered_he"]["level_shapes"])}


def _counts_extras(layout: StorageLayout, slide_id: str, meta: dict[str, dict[str, Any]]) -> dict[str, Any]:
    c = meta["cell_counts"]
    return {"n_cells": c["cell_n_cells"], "n_genes": c["cell_n_genes"], "n_counted": c["cell_n_transcripts"],
            "step_seconds": {a: m["wall_s"] for a, m in meta.items()},
            "step_peak_rss_mb": {a: m["peak_rss_mb"] for a, m in meta.items()}}


def _annotation_extras(layout: StorageLayout, slide_id: str, meta: dict[str, dict[str, Any]]) -> dict[str, Any]:
    import polars as pl

    from sthelar_platform.core.warehouse import CellTypesFolder
    from sthelar_platform.ingest.manifest import SlideCatalog

    spec = SlideCatalog(layout.catalog).get(slide_id)
    labels = pl.read_parquet(layout.folder(CellTypesFolder, slide_id).cell_labels, columns=["cell_id", "category"])
    truth = pl.read_parquet(spec.xenium_dir.parent / "truth" / "cells.parquet", columns=["cell_id", "category"])
    j = labels.join(truth, on="cell_id", suffix="_true")
    ct, tg = meta["cell_types"], meta["tangram_labels"]
    return {"n_cells": labels.height, "step_seconds": {a: m["wall_s"] for a, m in meta.items()},
            "step_peak_rss_mb": {a: m["peak_rss_mb"] for a, m in meta.items()},
            "n_shared_genes": tg["n_shared_genes"], "n_tangram_training_genes": tg["n_training_genes"],
            "accuracy_vs_truth": round(j.select((pl.col("category") == pl.col("category_true")).mean()).item(), 4),
            "crosscheck_agreement": ct["crosscheck_agreement"], "n_clusters": ct["n_clusters"],
            "n_flagged_clusters": ct["n_flagged_clusters"]}


def _patches_extras(layout: StorageLayout, slide_id: str, meta: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for name, m in meta.items():
        mag = name.removeprefix("patches_")
        out[mag] = {"n_patches": m["n_patches"], "n_tissue": m["n_tissue"], "seconds": m["wall_s"],
                    "patches_per_s": round(m["n_patches"] / max(m["wall_s"], 1e-9), 1), "level_shape": m.get("level_shape")}
    return out


def _segmentation_extras(layout: StorageLayout, slide_id: str, meta: dict[str, dict[str, Any]]) -> dict[str, Any]:
    m = meta["reference_segmentation"]
    return {mag: {"n_patches": m[f"n_patches_{mag}"], "n_ref_nuclei": m[f"n_ref_nuclei_{mag}"]} for mag in ("40x", "20x")}


def _agreement_extras(layout: StorageLayout, slide_id: str, meta: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The asset's numbers, and the metric alone on up to 500 40x patches in memory (one thread)."""
    import numpy as np
    import pandas as pd

    from sthelar_platform.core.config import load_config
    from sthelar_platform.core.warehouse import AgreementFolder, PatchesFolder, ReferenceSegmentationFolder
    from sthelar_platform.tiling.agreement import patch_agreement
    from sthelar_platform.tiling.patches import load_labels

    acfg = load_config("tiling").agreement
    patches = layout.folder(PatchesFolder, slide_id, PatchesFolder.stage_of("40x"))
    ref = layout.folder(ReferenceSegmentationFolder, slide_id).magnification("40x")
    names = pd.read_parquet(patches.patches, columns=["name"])["name"].tolist()[:500]
    pairs = [(load_labels(patches.labels / f"{n}.npz")["inst_map"], load_labels(ref / f"{n}.npz")["inst_map"]) for n in names]
    t0 = time.perf_counter()
    for t, p in pairs:
        patch_agreement(t, p, acfg.detection_radius_px["40x"], acfg.match_iou)
    metric_ms = (time.perf_counter() - t0) / max(len(pairs), 1) * 1000
    table = pd.read_parquet(layout.folder(AgreementFolder, slide_id).agreement)
    m = meta["segmentation_agreement"]
    d40 = m.get("agreement_40x", {})
    return {"metric_ms_per_patch_40x": round(metric_ms, 3), "metric_sample": len(pairs),
            "end_to_end_ms_per_patch": round(m["wall_s"] / max(len(table), 1) * 1000, 3), "n_patches": len(table),
            "median_40x": {k: d40.get(k, {}).get("median") for k in ("dice", "jaccard", "bpq", "det_f1")},
            "frac_flagged_40x": round(float(d40.get("frac_flagged", 0.0)), 4),
            "nan_count": int(np.isnan(table["jaccard"]).sum())}


def _export_extras(layout: StorageLayout, slide_id: str, meta: dict[str, dict[str, Any]]) -> dict[str, Any]:
    m = meta["slide_export"]
    return {"cellvit": m["cellvit"], "pannuke": m["pannuke"] or "skipped (see pannuke_note)"}


STAGES: dict[str, BenchStage] = {
    "synth": BenchStage((), "cells/s", lambda meta: 0.0, description="generate the size's SYNTHETIC slides"),
    "ingest": BenchStage(("xenium_slide", "he_image"), "transcripts/s", lambda m: m["xenium_slide"]["n_transcripts"],
                         _ingest_extras),
    "registration": BenchStage(("he_registration",), "nuclei/s", lambda m: m["he_registration"]["n_xenium_nuclei"],
                               _registration_extras),
    "registered_he": BenchStage(("registered_he",), "megapixels/s",
                                lambda m: m["registered_he"]["level_shapes"][0][0] * m["registered_he"]["level_shapes"][0][1] / 1e6,
                                _registered_he_extras),
    "counts": BenchStage(("nucleus_counts", "cell_counts"), "transcripts/s",
                         lambda m: m["cell_counts"]["cell_n_transcripts"], _counts_extras),
    "annotation": BenchStage(("nucleus_counts", "cell_counts", "tangram_labels", "clusters", "cell_types"), "cells/s",
                             lambda m: m["cell_types"]["dagster/row_count"], _annotation_extras),
    "patches": BenchStage(("patches_40x", "patches_20x"), "patches/s (40x and 20x together; each in inputs.<mag>)",
                          lambda m: sum(v["n_patches"] for v in m.values()), _patches_extras),
    "reference_segmentation": BenchStage(("reference_segmentation",), "patches/s (40x and 20x together)",
                                         lambda m: m["reference_segmentation"]["dagster/row_count"], _segmentation_extras),
    "agreement": BenchStage(("segmentation_agreement",), "patches/s",
                            lambda m: m["segmentation_agreement"]["dagster/row_count"], _agreement_extras),
    "export": BenchStage(("slide_export",), "patches/s (every magnification and grouping)",
                         lambda m: m["slide_export"]["dagster/row_count"], _export_extras),
}


# -- running ------------------------------------------------------------------------------------------------------

def _materialize_in_child(home: str, config_dir: str | None, slide_id: str, asset: str, queue: Any) -> None:
    """One asset of one slide partition, materialized in this fresh process; its metadata back through ``queue``."""
    t0 = time.perf_counter()
    try:
        os.environ["STHELAR_HOME"] = home
        if config_dir:
            os.environ["STHELAR_CONFIG_DIR"] = config_dir
        from dagster import AssetKey, DagsterInstance, materialize

        import sthelar_definitions as defs

        import_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with DagsterInstance.ephemeral() as instance:
            instance.add_dynamic_partitions("slides", [slide_id])
            result = materialize([*defs.SLIDE_SOURCES, *defs.ALL_ASSETS], selection=[AssetKey(asset)],
                                 partition_key=slide_id, instance=instance, resources=defs.build_resources(home),
                                 raise_on_error=False)
        if not result.success:
            errors = [str(e.event_specific_data.error.message).strip().splitlines()[-1]  # type: ignore[union-attr]
                      for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
            raise RuntimeError("; ".join(errors) or "the run failed")
        event = result.get_asset_materialization_events()[0]
        meta = {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}
        queue.put(("ok", {**{k: v for k, v in meta.items() if _plain(v)},
                          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          "import_rss_mb": import_rss, "process_s": time.perf_counter() - t0}))
    except BaseException as exc:  # report, do not hang the parent
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def _plain(v: Any) -> bool:
    return isinstance(v, str | int | float | bool | list | dict | type(None))


def _spawn(target: Callable[..., None], *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    status, res = q.get()
    p.join()
    if status != "ok":
        raise RuntimeError(res)
    return res


def _synthesize_in_child(run: BenchRun, queue: Any) -> None:
    t0 = time.perf_counter()
    try:
        from sthelar_platform.core.config import load_categories, load_synthetic
        from sthelar_platform.ingest.manifest import SlideCatalog, load_manifest
        from sthelar_platform.synth import synthesize_cohort

        layout = run.layout
        manifest = synthesize_cohort(layout.landing / "synthetic", run.size, load_synthetic(), load_categories(), seed=run.seed)
        # the registration stage benchmarks the automatic search: the slides are registered without their CSV
        specs = [dataclasses.replace(s, alignment_csv=None) for s in load_manifest(manifest)]
        SlideCatalog(layout.catalog).add(specs, replace=True)
        facts = _slide_facts(layout)
        queue.put(("ok", {**facts, "slide_ids": [s.slide_id for s in specs], "manifest": str(manifest),
                          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          "wall_s": time.perf_counter() - t0, "_work": facts["n_cells"]}))
    except BaseException as exc:
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def _pannuke_guard(run: BenchRun) -> str | None:
    """PanNuke arrays are dense (every patch x 256 x 256 x classes): on a Prime 5K slide they can outgrow the
    disk. When they would, the export runs without them (a config override in the bench folder) and says so.
    """
    import pandas as pd
    import yaml

    from sthelar_platform.core.config import PACKAGED_CONFIG_DIR, load_categories
    from sthelar_platform.core.warehouse import PatchesFolder

    slide = _slide_ids(run)[0]
    cats = load_categories()
    n = sum(len(pd.read_parquet(run.layout.folder(PatchesFolder, slide, PatchesFolder.stage_of(m)).patches, columns=["name"]))
            for m in ("40x", "20x"))
    need = n * 256 * 256 * (3 + sum(len(g.classes) + 1 for g in cats.groupings.values()))
    free = shutil.disk_usage(run.bench).free
    if need <= 0.8 * free:
        return None
    cfg = yaml.safe_load((PACKAGED_CONFIG_DIR / "tiling.yaml").read_text())
    cfg["exports"]["pannuke"] = False
    run.config_dir.mkdir(parents=True, exist_ok=True)
    (run.config_dir / "tiling.yaml").write_text(yaml.safe_dump(cfg))
    return f"skipped here: PanNuke arrays need up to {need / 1e9:.0f} GB, {free / 1e9:.0f} GB free"


def _slide_ids(run: BenchRun) -> list[str]:
    from sthelar_platform.ingest.manifest import SlideCatalog

    return [s.slide_id for s in SlideCatalog(run.layout.catalog).list()]


def run_stage(run: BenchRun, name: str) -> dict[str, Any]:
    """Materialize one stage's assets for the size's first slide, each asset in a fresh process."""
    stage = STAGES[name]
    if name == "synth":
        res = _spawn(_synthesize_in_child, run)
        work, res["wall_s"] = res.pop("_work"), round(res["wall_s"], 2)
        return _report(run, name, res, work, stage.unit, res.pop("wall_s"), res.pop("peak_rss_mb"))
    slide = _slide_ids(run)[0]
    note = _pannuke_guard(run) if name == "export" else None
    config_dir = str(run.config_dir) if (run.config_dir / "tiling.yaml").exists() else None
    meta = {a: _spawn(_materialize_in_child, str(run.layout.root), config_dir, slide, a) for a in stage.assets}
    inputs = stage.extras(run.layout, slide, meta) if stage.extras else {}
    if note:
        inputs["pannuke_note"] = note
    inputs["process_s"] = {a: round(m["process_s"], 2) for a, m in meta.items()}
    inputs["import_rss_mb"] = round(max(m["import_rss_mb"] for m in meta.values()), 1)
    wall = sum(float(m["wall_s"]) for m in meta.values())
    return _report(run, name, inputs, stage.work(meta), stage.unit, wall, max(m["peak_rss_mb"] for m in meta.values()))


def run_benchmarks(layout: StorageLayout, size: str = "bench", stages: list[str] | None = None,
                   seed: int = 0) -> list[dict[str, Any]]:
    """Run the named stages (default all) on the size's SYNTHETIC slide; one JSON per stage, and the summary."""
    run = BenchRun(size=size, bench=layout.bench / size, seed=seed)
    run.bench.mkdir(parents=True, exist_ok=True)
    todo = stages or list(STAGES)
    unknown = sorted(set(todo) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown benchmark stage(s) {unknown}; known: {', '.join(STAGES)}")
    generated = run.layout.catalog.exists()
    for name in todo:
        if name == "synth" and generated:
            continue  # generated once, reused
        if name != "synth" and not generated:
            run.results.append(run_stage(run, "synth"))
            generated = True
        run.results.append(run_stage(run, name))
        if name == "synth":
            generated = True
        write_size_summary(run)
    return run.results


def write_size_summary(run: BenchRun) -> Path:
    """``bench/<size>/summary.json``: every stage JSON of this size, the slide's facts and each stage's command."""
    stages = {}
    for name in STAGES:
        path = run.bench / f"{name}.json"
        if path.exists():
            res = json.loads(path.read_text())
            stages[name] = {k: v for k, v in res.items() if k not in ("stage", "size", "machine")}
    summary = {"size": run.size, "slide": _slide_facts(run.layout), "machine": _machine(), "stages": stages}
    out = run.bench / "summary.json"
    write_text_atomic(out, json.dumps(summary, indent=2))
    return out


def _machine() -> dict[str, Any]:
    return {"cpus": mp.cpu_count(), "python": platform.python_version()}


def _command(run: BenchRun, stage: str) -> str:
    return f"sthelar --home {run.bench.parent.parent} bench --size {run.size} --stage {stage}"


def _report(run: BenchRun, name: str, inputs: dict[str, Any], work: float, unit: str, wall_s: float,
            peak_rss_mb: float) -> dict[str, Any]:
    out = {"stage": name, "size": run.size, "command": _command(run, name), "wall_s": round(wall_s, 2),
           "throughput": round((work or 1) / max(wall_s, 1e-9), 2), "throughput_unit": unit,
           "peak_rss_mb": round(peak_rss_mb, 1), "inputs": inputs, "machine": _machine()}
    write_text_atomic(run.bench / f"{name}.json", json.dumps(out, indent=2, default=str))
    return out
