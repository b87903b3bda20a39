"""How many atlas markers Tangram should fit on for a large panel: time and per-cell accuracy.

Usage: python benchmarks/tangram_training_genes.py --home HOME [--size xl] [--cells 5000] [--out FILE.json]
                                                  [--grid 100:300 20:300 10:300 10:100 5:100]

Needs the size's bench slide and its `cell_counts` step (`sthelar bench --size xl --stage ingest
--stage annotation`). Maps one bag of randomly drawn cells (more than 10 transcripts) with each
markers-per-label : epochs setting and scores Tangram's own category (before the cluster rule)
against the SYNTHETIC truth. Sets `tangram.markers_per_label` in sthelar_platform/config/annotation.yaml.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import bench_slide, emit, peak_rss_mb  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Time Tangram on one bag for each grid setting and report its accuracy against truth."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--size", default="xl")
    p.add_argument("--cells", type=int, default=5000)
    p.add_argument("--grid", nargs="+", default=["100:300", "20:300", "10:300", "10:100", "5:100"])
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    import anndata as ad
    import polars as pl

    from sthelar_platform.annotation import references
    from sthelar_platform.annotation import tangram as tt
    from sthelar_platform.core.config import load_categories, load_config
    from sthelar_platform.core.warehouse import CellCountsFolder

    layout, spec = bench_slide(args.home, args.size)
    cfg = load_config("annotation")
    ref = references.load_reference(references.reference_spec(spec.tissue, layout.references, cfg.references,
                                                              spec.reference), load_categories(), cfg.references)
    to_cat = dict(zip(ref.obs["label"], ref.obs["category"], strict=False))
    cell = ad.read_h5ad(layout.folder(CellCountsFolder, spec.slide_id).cell, backed="r")
    pick = np.sort(np.random.default_rng(0).choice(cell.n_obs, min(args.cells, cell.n_obs), replace=False))
    q = cell[pick].to_memory()
    q = q[q.obs["n_transcripts"].to_numpy() > 10].copy()
    truth = (pl.read_parquet(spec.xenium_dir.parent / "truth" / "cells.parquet", columns=["cell_id", "category"])
             .to_pandas().set_index("cell_id")["category"])
    genes = tt.shared_genes(q, ref, cfg.references.min_shared_genes, str(spec.xenium_dir))
    runs = []
    for setting in args.grid:
        per_label, epochs = (int(v) for v in setting.split(":"))
        c = cfg.tangram.model_copy(update={"bag_size": q.n_obs, "markers_per_label": per_label, "num_epochs": epochs,
                                           "device": "cpu"})
        fit = tt.training_genes(ref, genes, c)
        t0 = time.perf_counter()
        scores = tt.raw_scores(q, ref, fit, c, "cpu")
        seconds = time.perf_counter() - t0
        category = tt.hard_labels(scores, ref.obs["label"].value_counts(normalize=True), c)["label"].map(to_cat)
        acc = float((category.to_numpy() == truth.reindex(category.index).to_numpy()).mean())
        runs.append({"markers_per_label": per_label, "num_epochs": epochs, "n_training_genes": len(fit),
                     "seconds": round(seconds, 1), "cells_per_s": round(q.n_obs / seconds, 1),
                     "category_accuracy": round(acc, 4)})
        print(json.dumps(runs[-1]), flush=True)
    report = {"benchmark": "tangram_training_genes", "size": args.size, "n_cells": int(q.n_obs),
              "n_shared_genes": len(genes), "runs": runs,
              "peak_rss_mb": peak_rss_mb()}
    return emit(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
