"""Annotation accuracy against the SYNTHETIC truth for every annotated slide of a platform home.

    .venv/bin/python benchmarks/annotation_accuracy.py --home sthelar_home [--out FILE.json]

Prints per slide: accuracy and macro-F1 of the harmonized categories (and both groupings), the
accuracy of each independent check (centroid correlation, SingleR) against the truth, the accuracy
on single cells only (a realistic world's doublets excluded), and the confusion matrix (rows =
truth, columns = label). ``--out`` writes the per-slide rows as JSON.
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
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    layout = StorageLayout.at(args.home)
    rows = []
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
        active = lab.category != "Less10"
        for check, column in (("crosscheck", "crosscheck_label"), ("singler", "singler_category")):
            if column in lab:
                out[f"{check}_accuracy"] = round(float((lab.loc[active, column] == tr.loc[active, "category"]).mean()), 4)
        if "doublet" in tr:
            single = ~tr["doublet"].to_numpy()
            out["n_doublets"] = int((~single).sum())
            out["accuracy_single_cells"] = round(float((lab.category[single] == tr.category[single]).mean()), 4)
        world = spec.xenium_dir.parent / "truth" / "world.json"
        out["world"] = json.loads(world.read_text())["world"] if world.exists() else "simple"
        rows.append(out)
        print(json.dumps(out))
        print(pd.crosstab(tr.category.rename("truth"), lab.category.rename("label")).to_string())
    if args.out:
        args.out.write_text(json.dumps({"benchmark": "annotation_accuracy", "slides": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
