"""Annotation accuracy against the SYNTHETIC truth for every annotated slide of a platform home.

    .venv/bin/python benchmarks/annotation_accuracy.py --home sthelar_home

Prints per slide: accuracy and macro-F1 of the harmonized categories (and both groupings), the
cross-check agreement, and the confusion matrix (rows = truth, columns = label).
"""

import argparse
import json
from pathlib import Path

import pandas as pd
import polars as pl
from sklearn.metrics import f1_score

from sthelar_platform.core.paths import StorageLayout
from sthelar_platform.ingest.manifest import SlideCatalog


def main() -> None:
    """Print each registered slide's label accuracy against its synthetic truth."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, required=True)
    args = ap.parse_args()
    layout = StorageLayout.at(args.home)
    for spec in SlideCatalog(layout.catalog).list():
        labels_path = layout.stage_dir("cell_types", spec.slide_id) / "cell_labels.parquet"
        truth_path = spec.xenium_dir.parent / "truth" / "cells.parquet"
        if not labels_path.exists() or not truth_path.exists():
            continue
        lab = pd.read_parquet(labels_path).set_index("cell_id")
        tr = pl.read_parquet(truth_path).to_pandas().set_index("cell_id").loc[lab.index]
        out = {"slide": spec.slide_id, "n_cells": len(lab),
               "accuracy": round(float((lab.category == tr.category).mean()), 4),
               "macro_f1": round(float(f1_score(tr.category, lab.category, average="macro")), 4),
               "detailed_accuracy": round(float((lab.detailed_class == tr.detailed_class).mean()), 4),
               "grouped_accuracy": round(float((lab.grouped_class == tr.grouped_class).mean()), 4)}
        print(json.dumps(out))
        print(pd.crosstab(tr.category.rename("truth"), lab.category.rename("label")).to_string())


if __name__ == "__main__":
    main()
