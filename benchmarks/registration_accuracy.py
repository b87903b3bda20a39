"""Registration error against the true mapping on SYNTHETIC slides: CSV, perturbed CSV, automatic.

    .venv/bin/python benchmarks/registration_accuracy.py --cohort sthelar_home/landing/synthetic_demo [--out F.json]

Prints one JSON object per slide and mode (median / p90 error over all cells, in µm). On a realistic
world's slides the H&E section is deformed non-rigidly (truth/deformation.json): the error is then
reported for the affine alone and with the non-rigid refinement (config registration.nonrigid).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import polars as pl

from sthelar_platform.core.config import load_config
from sthelar_platform.core.displacement import DisplacementField
from sthelar_platform.ingest.manifest import load_manifest
from sthelar_platform.registration import transform as reg
from sthelar_platform.registration.slide import detect_nuclei

MORPH_UM = 0.2125


def main() -> None:
    """Registration error against the true transform for CSV, perturbed-CSV and automatic modes."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--cohort", type=Path, required=True, help="folder with manifest.yaml (from `sthelar synth`)")
    ap.add_argument("--modes", nargs="+", default=["csv", "perturbed_csv", "automatic"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    cfg = load_config("pipeline").registration
    rows = []
    for spec in load_manifest(args.cohort / "manifest.yaml"):
        truth_dir = spec.xenium_dir.parent / "truth"
        truth = np.array(json.loads((truth_dir / "transform.json").read_text())["he_to_morphology"])
        cells = pl.read_parquet(truth_dir / "cells.parquet")
        xen_um = cells.filter(pl.col("has_nucleus")).select("x_um", "y_um").to_numpy()
        cell_um = cells.select("x_um", "y_um").to_numpy()
        field = truth_dir / "deformation.json"
        deformation = DisplacementField.from_dict(json.loads(field.read_text())) if field.exists() else None
        seen_at = cell_um if deformation is None else deformation.forward(cell_um)  # where the H&E shows each cell
        all_he = reg.apply(np.linalg.inv(truth), seen_at / MORPH_UM)
        he_um = 0.2738
        he_pts, level0 = detect_nuclei(spec.he_image, cfg, he_um)  # level-0 centroids, as the stage does
        t = np.deg2rad(2.0)
        perturbed = np.array([[np.cos(t), -np.sin(t), 20 / MORPH_UM], [np.sin(t), np.cos(t), 0], [0, 0, 1]]) @ truth
        csv = reg.read_alignment_csv(spec.alignment_csv)
        for mode, m in (("csv", csv), ("perturbed_csv", perturbed), ("automatic", None)):
            if mode not in args.modes:
                continue
            t0 = time.perf_counter()
            qc = reg.register(he_pts, he_um, xen_um, MORPH_UM, cfg, csv_matrix=m, level0=level0)
            affine_um = reg.apply(np.array(qc.transform), all_he) * MORPH_UM
            err = np.linalg.norm(affine_um - cell_um, axis=1)
            row = {"slide": spec.slide_id, "mode": mode, "n_cells": len(all_he), "deformed": deformation is not None,
                   "median_error_um": round(float(np.median(err)), 3), "p90_error_um": round(float(np.percentile(err, 90)), 3),
                   "median_residual_um": round(qc.median_residual_um, 3), "matched_fraction": round(qc.matched_fraction, 4)}
            warped = reg.refine_nonrigid(qc, he_pts, xen_um, MORPH_UM, cfg.match_radius_um, cfg.nonrigid, level0)
            warp = reg.warp_of(warped)
            err_w = np.linalg.norm((affine_um if warp is None else warp.forward(affine_um)) - cell_um, axis=1)
            row |= {"nonrigid_kept": warp is not None, "nonrigid_median_error_um": round(float(np.median(err_w)), 3),
                    "nonrigid_p90_error_um": round(float(np.percentile(err_w, 90)), 3),
                    "nonrigid_median_residual_um": round(float(warped.nonrigid_median_residual_um or np.nan), 3),
                    "nonrigid_note": warped.nonrigid_note}
            if deformation is not None:
                row["true_displacement_rms_um"] = round(float(np.sqrt((deformation.at(cell_um) ** 2).sum(1).mean())), 3)
            row["seconds"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"benchmark": "registration_accuracy", "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
