"""SingleR as the cell_types cross-check on a benchmark slide: seconds, peak memory, agreement.

Usage: python benchmarks/singler_crosscheck.py --home HOME --size bench [--out FILE.json]

Reads what ``sthelar --home HOME bench --size SIZE --stage annotation`` left in its benchmark home (the
cell counts, the final labels, the slide's atlas and truth); builds
SingleR's reference as ``tangram_labels`` does and labels every annotated cell as ``cell_types``
does. Reports the time of each step, the peak RSS, and SingleR's agreement with the final
categories and with the SYNTHETIC truth.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import anndata as ad
import pandas as pd
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import bench_slide, emit, peak_rss_mb  # noqa: E402
from sthelar_platform.annotation import crosscheck, references, tangram  # noqa: E402
from sthelar_platform.core.config import load_categories, load_config  # noqa: E402
from sthelar_platform.core.warehouse import CellCountsFolder, CellTypesFolder  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Time SingleR's reference and labelling on one benchmark slide; print / write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--size", default="bench")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    cfg = load_config("annotation")
    layout, slide = bench_slide(args.home, args.size)
    cell = ad.read_h5ad(layout.folder(CellCountsFolder, slide.slide_id).cell)
    labels = pd.read_parquet(layout.folder(CellTypesFolder, slide.slide_id).cell_labels).set_index("cell_id")
    truth = pl.read_parquet(slide.xenium_dir.parent / "truth" / "cells.parquet",
                            columns=["cell_id", "category"]).to_pandas().set_index("cell_id")
    spec = references.reference_spec(slide.tissue, layout.references, cfg.references, slide.reference)
    ref = references.load_reference(spec, load_categories(), cfg.references)
    genes = tangram.shared_genes(cell, ref, cfg.references.min_shared_genes, str(spec.path))
    genes = tangram.training_genes(ref, genes, cfg.tangram)  # as tangram_labels saves SingleR's reference
    t0 = time.perf_counter()
    reference = crosscheck.singler_reference(ref, genes, cfg.clustering.target_sum)
    t_ref = time.perf_counter() - t0
    active = labels.index[labels["category"] != "Less10"]
    t0 = time.perf_counter()
    got = crosscheck.singler_labels(cell[active], reference, cfg.clustering.target_sum,
                                    cfg.crosscheck.singler_threads)
    t_label = time.perf_counter() - t0
    final = labels.loc[active, "category"]
    report = {
        "benchmark": "singler_crosscheck", "size": args.size, "n_cells": int(len(active)), "n_genes": len(genes),
        "n_reference_cells": int(ref.n_obs), "n_reference_labels": int(ref.obs["label"].nunique()),
        "reference_s": round(t_ref, 2), "label_s": round(t_label, 2),
        "cells_per_s": round(len(active) / max(t_label, 1e-9), 1), "peak_rss_mb": peak_rss_mb(),
        "agreement_with_final": round(float((got["singler_category"] == final).mean()), 4),
        "agreement_with_truth": round(float((got["singler_category"] == truth.loc[active, "category"]).mean()), 4),
        "crosscheck_agreement_with_final": round(float((labels.loc[active, "crosscheck_label"] == final).mean()), 4),
    }
    return emit(report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
