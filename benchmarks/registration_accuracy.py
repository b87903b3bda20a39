"""Registration error against the true transform on SYNTHETIC slides: CSV, perturbed CSV, automatic.

    .venv/bin/python benchmarks/registration_accuracy.py --cohort sthelar_home/landing/synthetic_demo

Prints one JSON object per slide and mode (median / p90 error over all cells, in µm).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import polars as pl

from sthelar_platform.core.config import load_config
from sthelar_platform.ingest.manifest import load_manifest
from sthelar_platform.registration import transform as reg

MORPH_UM = 0.2125


def main() -> None:
    """Registration error against the true transform for CSV, perturbed-CSV and automatic modes."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--cohort", type=Path, required=True, help="folder with manifest.yaml (from `sthelar synth`)")
    args = ap.parse_args()
    cfg = load_config("pipeline")["registration"]
    for spec in load_manifest(args.cohort / "manifest.yaml"):
        truth_dir = spec.xenium_dir.parent / "truth"
        truth = np.array(json.loads((truth_dir / "transform.json").read_text())["he_to_morphology"])
        cells = pl.read_parquet(truth_dir / "cells.parquet")
        xen_um = cells.filter(pl.col("has_nucleus")).select("x_um", "y_um").to_numpy()
        all_he = reg.apply(np.linalg.inv(truth), cells.select("x_um", "y_um").to_numpy() / MORPH_UM)
        he_um = 0.2738
        he_pts = reg.detect_he_nuclei(spec.he_image, cfg["detection_um_per_px"], cfg["detection_sigma_um"],
                                      cfg["detection_min_distance_um"])
        t = np.deg2rad(2.0)
        perturbed = np.array([[np.cos(t), -np.sin(t), 20 / MORPH_UM], [np.sin(t), np.cos(t), 0], [0, 0, 1]]) @ truth
        csv = reg.read_alignment_csv(spec.alignment_csv)
        for mode, m in (("csv", csv), ("perturbed_csv", perturbed), ("automatic", None)):
            t0 = time.perf_counter()
            qc = reg.register(he_pts, he_um, xen_um, MORPH_UM, cfg, csv_matrix=m)
            err = reg.transform_error_um(np.array(qc.transform), truth, all_he, MORPH_UM)
            print(json.dumps({"slide": spec.slide_id, "mode": mode, "n_cells": len(all_he),
                              "median_error_um": round(float(np.median(err)), 3),
                              "p90_error_um": round(float(np.percentile(err, 90)), 3),
                              "median_residual_um": round(qc.median_residual_um, 3),
                              "matched_fraction": round(qc.matched_fraction, 4),
                              "seconds": round(time.perf_counter() - t0, 2)}))


if __name__ == "__main__":
    main()
