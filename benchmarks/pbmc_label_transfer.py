"""Tangram and the cross-check on real data: scanpy's pbmc68k_reduced split into reference / query halves.

    .venv/bin/python benchmarks/pbmc_label_transfer.py

pbmc68k_reduced ships log-normalized values (in .raw), not counts; expm1 gives normalized
expression, which both methods re-normalize. Prints JSON: agreement with `bulk_labels`.
"""

import json

import numpy as np
import pandas as pd
import scanpy as sc

from sthelar_platform.annotation.crosscheck import centroid_labels, reference_centroids
from sthelar_platform.annotation.tangram import hard_labels, raw_scores
from sthelar_platform.core.config import load_config


def main() -> None:
    """Leave-one-half-out label transfer on pbmc68k_reduced (real PBMC): Tangram and the cross-check."""
    adata = sc.datasets.pbmc68k_reduced()
    raw = adata.raw.to_adata()
    raw.X = np.expm1(raw.X.toarray() if hasattr(raw.X, "toarray") else raw.X)
    raw.obs["label"] = adata.obs["bulk_labels"].astype(str).values
    raw.obs["category"] = raw.obs["label"]
    rng = np.random.default_rng(0)
    is_ref = np.zeros(raw.n_obs, bool)
    for lb in raw.obs["label"].unique():  # stratified halves
        idx = np.flatnonzero(raw.obs["label"].to_numpy() == lb)
        is_ref[rng.choice(idx, len(idx) // 2, replace=False)] = True
    ref, query = raw[is_ref].copy(), raw[~is_ref].copy()
    genes = list(raw.var_names)
    cfg = {**load_config("annotation")["tangram"], "device": "cpu"}
    scores = raw_scores(query, ref, genes, cfg, "cpu")
    tg = hard_labels(scores, ref.obs["label"].value_counts(normalize=True), cfg)
    cross = centroid_labels(query, reference_centroids(ref, genes))
    truth = query.obs["label"]
    per_label = pd.DataFrame({"truth": truth, "tangram": tg["label"].reindex(truth.index),
                              "crosscheck": cross["crosscheck_label"]})
    out = {"n_reference": int(ref.n_obs), "n_query": int(query.n_obs), "n_genes": len(genes),
           "tangram_agreement": round(float((per_label.tangram == per_label.truth).mean()), 4),
           "crosscheck_agreement": round(float((per_label.crosscheck == per_label.truth).mean()), 4),
           "tangram_vs_crosscheck": round(float((per_label.tangram == per_label.crosscheck).mean()), 4),
           "per_label": {lb: {"n": int(len(g)), "tangram": round(float((g.tangram == lb).mean()), 3),
                              "crosscheck": round(float((g.crosscheck == lb).mean()), 3)}
                         for lb, g in per_label.groupby("truth")}}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
