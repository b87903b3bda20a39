"""Label transfer on real data: scanpy's pbmc68k_reduced split into stratified reference / query halves.

    .venv/bin/python benchmarks/pbmc_label_transfer.py [--out FILE.json]

Tangram, the centroid cross-check, SingleR (the `singler` package, as STHELAR's check) and a plain
classifier baseline (logistic regression on the reference half) each label the query half.
pbmc68k_reduced ships log-normalized values (in .raw), not counts: SingleR and the baseline use them
as they are; expm1 gives Tangram and the cross-check normalized expression, which they re-normalize.
Prints JSON: agreement with `bulk_labels`, overall and per label, and at two coarser levels: the cell
type each sorted population is (naive, memory and regulatory CD4 T cells are all CD4 T cells), and the
platform's harmonized category (sthelar_platform/config/categories.yaml), the level the platform annotates slides at.
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import emit, peak_rss_mb  # noqa: E402
from sthelar_platform.annotation.crosscheck import centroid_labels, reference_centroids  # noqa: E402
from sthelar_platform.annotation.tangram import hard_labels, raw_scores  # noqa: E402
from sthelar_platform.core.config import load_categories, load_config  # noqa: E402

METHODS = ("tangram", "crosscheck", "singler", "logistic_regression")
# The cell type of each sorted population (Zheng et al. 2017), in the vocabulary of categories.yaml's label_map;
# CD34+ cells are haematopoietic progenitors, which the platform's categories call Stem_like.
CELL_TYPE = {"CD14+ Monocyte": "Monocyte", "CD19+ B": "B cell", "CD34+": "Stem_like",
             "CD4+/CD25 T Reg": "CD4 T cell", "CD4+/CD45RA+/CD25- Naive T": "CD4 T cell",
             "CD4+/CD45RO+ Memory": "CD4 T cell", "CD56+ NK": "NK cell", "CD8+ Cytotoxic T": "CD8 T cell",
             "CD8+/CD45RA+ Naive Cytotoxic": "CD8 T cell", "Dendritic": "Dendritic cell"}


def _singler(log_ref: np.ndarray, ref_labels: np.ndarray, log_query: np.ndarray, genes: list[str]) -> np.ndarray:
    """SingleR's best label per query cell (genes x cells matrices, log-normalized)."""
    import singler

    res = singler.annotate_single(test_data=log_query.T, test_features=genes, ref_data=log_ref.T,
                                  ref_labels=ref_labels, ref_features=genes, num_threads=os.cpu_count() or 1)
    return np.asarray(res.get_column("best")).astype(str)


def _logistic(log_ref: np.ndarray, ref_labels: np.ndarray, log_query: np.ndarray) -> np.ndarray:
    """The plain baseline: a multinomial logistic regression on the reference half's log expression."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, random_state=0).fit(log_ref, ref_labels).predict(log_query)


def main(argv: list[str] | None = None) -> int:
    """Leave-one-half-out label transfer on pbmc68k_reduced (real PBMC) by every method."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    adata = sc.datasets.pbmc68k_reduced()
    raw = adata.raw.to_adata()
    log_x = np.asarray(raw.X.toarray() if hasattr(raw.X, "toarray") else raw.X, dtype=np.float64)
    raw.X = np.expm1(log_x)
    raw.obs["label"] = adata.obs["bulk_labels"].astype(str).values
    raw.obs["category"] = raw.obs["label"]
    rng = np.random.default_rng(0)
    is_ref = np.zeros(raw.n_obs, bool)
    for lb in raw.obs["label"].unique():  # stratified halves
        idx = np.flatnonzero(raw.obs["label"].to_numpy() == lb)
        is_ref[rng.choice(idx, len(idx) // 2, replace=False)] = True
    ref, query = raw[is_ref].copy(), raw[~is_ref].copy()
    genes = list(raw.var_names)
    cfg = load_config("annotation").tangram.model_copy(update={"device": "cpu"})
    scores = raw_scores(query, ref, genes, cfg, "cpu")
    tg = hard_labels(scores, ref.obs["label"].value_counts(normalize=True), cfg)
    cross = centroid_labels(query, reference_centroids(ref, genes))
    truth = query.obs["label"]
    ref_labels = ref.obs["label"].to_numpy()
    per_label = pd.DataFrame({"truth": truth, "tangram": tg["label"].reindex(truth.index),
                              "crosscheck": cross["crosscheck_label"],
                              "singler": _singler(log_x[is_ref], ref_labels, log_x[~is_ref], genes),
                              "logistic_regression": _logistic(log_x[is_ref], ref_labels, log_x[~is_ref])},
                             index=truth.index)
    agreement = {m: round(float((per_label[m] == per_label.truth).mean()), 4) for m in METHODS}
    categories = load_categories()
    to_category = {**{c: c for c in categories.categories}, **categories.label_map}
    levels = {"cell_type": lambda v: v.map(CELL_TYPE), "category": lambda v: v.map(CELL_TYPE).map(to_category)}
    coarse = {level: {m: round(float((f(per_label[m]) == f(per_label.truth)).mean()), 4) for m in METHODS}
              for level, f in levels.items()}
    out = {"n_reference": int(ref.n_obs), "n_query": int(query.n_obs), "n_genes": len(genes),
           "agreement": agreement, "best_method": max(agreement, key=agreement.get),
           "agreement_by_cell_type": coarse["cell_type"], "agreement_by_category": coarse["category"],
           "best_by_category": max(coarse["category"].values()),
           "tangram_vs_crosscheck": round(float((per_label.tangram == per_label.crosscheck).mean()), 4),
           "per_label": {lb: {"n": int(len(g)), **{m: round(float((g[m] == lb).mean()), 3) for m in METHODS}}
                         for lb, g in per_label.groupby("truth")},
           "peak_rss_mb": peak_rss_mb(),
           "command": "python benchmarks/pbmc_label_transfer.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    return emit(out, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
