"""SingleR as the cell_types cross-check on a benchmark slide: seconds, peak memory, agreement.

Usage: python benchmarks/singler_crosscheck.py --bench-dir HOME/bench --size bench [--out FILE.json]

Reads what ``sthelar bench --stage annotation`` left in ``<bench-dir>/annotation_out`` (the cell
counts and final labels) and the slide's atlas and truth in ``<bench-dir>/data_<size>``; builds
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

from benchmarks._report import emit, peak_rss_mb  # noqa: E402
from sthelar_platform.annotation import crosscheck, references, tangram  # noqa: E402
from sthelar_platform.core.config import load_categories, load_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Time SingleR's reference and labelling on one benchmark slide; print / write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench-dir", type=Path, required=True)
    p.add_argument("--size", default="bench")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    cfg = load_config("annotation")
    data = args.bench_dir / f"data_{args.size}"
    slide = next((data / "slides").iterdir())
    cell = ad.read_h5ad(args.bench_dir / "annotation_out" / "cell_counts" / "cell.h5ad")
    labels = pd.read_parquet(args.bench_dir / "annotation_out" / "cell_types" / "cell_labels.parquet").set_index("cell_id")
    truth = pl.read_parquet(slide / "truth" / "cells.parquet", columns=["cell_id", "category"]).to_pandas().set_index("cell_id")
    tissue = "breast"
    spec = references.ReferenceSpec(tissue, data / "references" / f"{tissue}.h5ad",
                                     cfg["references"]["default"]["label_column"])
    ref = references.load_reference(spec, load_categories(), cfg["references"])
    genes = tangram.shared_genes(cell, ref, cfg["references"]["min_shared_genes"], str(spec.path))
    genes = tangram.training_genes(ref, genes, cfg["tangram"])  # as tangram_labels saves SingleR's reference
    t0 = time.perf_counter()
    reference = crosscheck.singler_reference(ref, genes, cfg["clustering"]["target_sum"])
    t_ref = time.perf_counter() - t0
    active = labels.index[labels["category"] != "Less10"]
    t0 = time.perf_counter()
    got = crosscheck.singler_labels(cell[active], reference, cfg["clustering"]["target_sum"],
                                    cfg["crosscheck"]["singler_threads"])
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
