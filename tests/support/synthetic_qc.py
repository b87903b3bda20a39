"""SYNTHETIC lineage / QC rows at cohort scale, for the dashboard benchmark and the QC tests.

Fills the lineage tables the way the pipeline does (same tables, same columns) for ``n_slides``
slides of ``n_patches`` patches each, without running the pipeline. Every slide id starts with
``synthqc-`` so the rows can never be mistaken for a real slide's.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np

from sthelar_platform.core.lineage import LineageStore, utcnow

CATEGORIES = ["T_NK", "B_Plasma", "Myeloid", "Blood_vessel", "Fibroblast_Myofibroblast", "Epithelial", "Specialized",
              "Melanocyte", "Stem_like", "Unknown", "Less10"]
TISSUES = ["breast", "skin", "brain", "lung", "colon"]


def write_synthetic_qc(db_path: str | Path, n_slides: int, n_patches: int, seed: int = 0,
                       n_clusters: int = 15, url: str | None = None) -> list[str]:
    """Append one run's worth of QC rows per slide (to Postgres when ``url`` is given); returns the slide ids."""
    rng = np.random.default_rng(seed)
    store = LineageStore(db_path, url=url)
    slides = [f"synthqc-{i:03d}" for i in range(n_slides)]
    for i, sid in enumerate(slides):
        run = uuid.uuid4().hex
        tissue = TISSUES[i % len(TISSUES)]
        n_cells = int(rng.integers(50_000, 500_000))
        now = utcnow()
        store.record("slide_ingest", {"run_id": run, "slide_id": sid, "tissue": tissue, "n_cells": n_cells,
                                      "n_transcripts": n_cells * 120, "n_genes": 377, "n_controls": 40,
                                      "n_unassigned": n_cells * 5, "morphology_width": 40_000,
                                      "morphology_height": 30_000, "pixel_size_um": 0.2125, "synthetic": True},
                     flush=False)
        residual = float(rng.gamma(2.0, 0.4))
        store.record("registration_qc", {"run_id": run, "slide_id": sid, "source": "refined",
                                         "median_residual_um": residual, "p90_residual_um": residual * 2.2,
                                         "matched_fraction": float(rng.uniform(0.85, 1.0)),
                                         "transform": json.dumps(np.eye(3).tolist()), "passed": residual < 3.0},
                     flush=False)
        comp = dict(zip(CATEGORIES, (rng.dirichlet(np.ones(len(CATEGORIES))) * n_cells).astype(int).tolist(), strict=True))
        store.record("annotation_qc", {"run_id": run, "slide_id": sid, "n_cells": n_cells, "tissue": tissue,
                                       "frac_unknown": comp["Unknown"] / n_cells, "frac_less10": comp["Less10"] / n_cells,
                                       "crosscheck_agreement": float(rng.uniform(0.8, 1.0)), "n_flagged_clusters": 1,
                                       "frac_flagged_clusters": 1 / n_clusters, "passed": True,
                                       "reference_sha256": uuid.uuid4().hex * 2, "composition": json.dumps(comp)},
                     flush=False)
        store.record_many("annotation_clusters", [
            {"run_id": run, "slide_id": sid, "cluster": str(c), "n_cells": int(n_cells / n_clusters),
             "tangram_majority": CATEGORIES[c % 8], "marker_label": CATEGORIES[c % 8], "decision": "agree",
             "label": CATEGORIES[c % 8], "disagreeing_fraction": float(rng.uniform(0, 0.5)), "flagged": c == 0,
             "flag_reasons": "synthetic flag" if c == 0 else "", "top_markers": "GENE1, GENE2, GENE3"}
            for c in range(n_clusters)], flush=False)
        side = int(np.ceil(np.sqrt(n_patches)))
        for mag, n, step in (("40x", n_patches, 192), ("20x", n_patches // 4, 192)):
            k = np.arange(n)
            jac = np.clip(rng.beta(9, 2, n), 0, 1)
            store.record_many("patch_qc", [
                {"run_id": run, "slide_id": sid, "magnification": mag, "patch_id": f"{mag}_x{x:06d}_y{y:06d}",
                 "x0": x, "y0": y, "n_nuclei": nn, "dice": 2 * j / (1 + j), "jaccard": j, "bpq": j * 0.95,
                 "det_f1": min(1.0, j + 0.05), "flagged": j < 0.45, "recorded_at": now}
                for x, y, nn, j in zip(((k % side) * step).tolist(), ((k // side) * step).tolist(),
                                       rng.integers(1, 60, n).tolist(), jac.tolist(), strict=True)], flush=False)
        store.record("materializations", {"run_id": run, "asset_key": "cell_types", "partition_key": sid,
                                          "code_version": "synthetic", "data_version": uuid.uuid4().hex,
                                          "input_versions": "{}", "output_uri": f"file:///synthetic/{sid}",
                                          "started_at": now, "finished_at": now, "status": "success"}, flush=False)
    store.flush()
    return slides
