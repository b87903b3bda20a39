"""Registration error against the true transform for one SYNTHETIC slide's H&E stored several ways.

    .venv/bin/python benchmarks/registration_variants.py --workdir /tmp/regvar \
        --out benchmarks/results/registration_variants.json

The tiny slide's H&E as synthesised (hard-linked), rewritten as one level and converted, and as a
JPEG-tiled pyramid (Q=90, 4:2:0). Each is registered automatically with and without the level-0
centroid refinement (registration.level0_window_um); the error is measured at every cell against
the transform the slide was drawn with.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import polars as pl

from sthelar_platform.core.config import load_categories, load_config, load_synthetic
from sthelar_platform.ingest.he_image import ingest_he
from sthelar_platform.registration import transform as reg
from sthelar_platform.registration._level0 import refine_on_level0
from sthelar_platform.registration.slide import nucleus_centroids_um
from sthelar_platform.synth import synthesize_cohort
from sthelar_platform.synth.he_formats import write_he_variant

MORPH_UM = 0.2125


def main() -> None:
    """Per variant and mode: median / p90 error (µm) against the true transform, residual, time."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    pipeline = load_config("pipeline")
    cfg = pipeline.registration
    cohort = args.workdir / "cohort"
    if not cohort.exists():
        synthesize_cohort(cohort, "tiny", load_synthetic(), load_categories(), seed=0)
    slide = cohort / "slides" / "tiny"
    truth = np.array(json.loads((slide / "truth" / "transform.json").read_text())["he_to_morphology"])
    cells = pl.read_parquet(slide / "truth" / "cells.parquet")
    every_cell = reg.apply(np.linalg.inv(truth), cells.select("x_um", "y_um").to_numpy() / MORPH_UM)
    xen_um = nucleus_centroids_um(slide / "xenium" / "nucleus_boundaries.parquet")
    source = slide / "he" / "tiny_he_image.ome.tif"
    results = []
    for variant in ("original", "single_level", "jpeg_tiles"):
        folder = args.workdir / variant
        (folder / "ingested").mkdir(parents=True, exist_ok=True)
        scan = source if variant == "original" else write_he_variant(source, folder / "scan", variant)
        summary = ingest_he(scan, folder / "ingested", pipeline.he_image.magnification_um_per_px)
        he = folder / "ingested" / "he_image.ome.tif"
        px = float(summary.pixel_size_um)
        detected = reg.detect_he_nuclei(he, cfg.detection_um_per_px, cfg.detection_sigma_um, cfg.detection_min_distance_um)
        for mode in ("detection level", "level-0 centroids"):
            t0 = time.perf_counter()
            points, level0 = detected, None
            if mode == "level-0 centroids":
                points, _ = refine_on_level0(he, detected, px, cfg.level0_window_um, cfg.level0_sigma_um)
                level0 = np.any(points != detected, axis=1)
            qc = reg.register(points, px, xen_um, MORPH_UM, cfg, level0=level0)
            err = reg.transform_error_um(np.array(qc.transform), truth, every_cell, MORPH_UM)
            row = {"variant": variant, "stored_as": summary.stored_as, "mode": mode, "n_he_nuclei": len(points),
                   "n_level0": 0 if level0 is None else int(level0.sum()),
                   "median_error_um": round(float(np.median(err)), 4), "p90_error_um": round(float(np.percentile(err, 90)), 4),
                   "median_residual_um": round(qc.median_residual_um, 3), "matched_fraction": round(qc.matched_fraction, 4),
                   "seconds": round(time.perf_counter() - t0, 2)}
            print(json.dumps(row), flush=True)
            results.append(row)
    args.out.write_text(json.dumps({"benchmark": "registration_variants", "slide": "tiny (SYNTHETIC)",
                                    "level0_window_um": cfg.level0_window_um, "level0_sigma_um": cfg.level0_sigma_um,
                                    "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
