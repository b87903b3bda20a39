"""Independent second classifiers: correlation to reference category centroids, and SingleR.

Neither sees Tangram's output, so where they agree the label rests on different methods.
The centroid check stays sparse: a cell's Pearson correlation with a centroid is its dot product
with the centred centroid over its own norm about its mean, and both come from sparse row sums.
SingleR (Aran et al. 2019; the ``singler`` package, STHELAR's check) trains on the atlas's fine
labels (Spearman correlation on pairwise markers, then fine-tuning) and is mapped to categories.
"""

from __future__ import annotations

import os

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from sthelar_platform.annotation.clustering import group_means, lognorm


def reference_centroids(ref: ad.AnnData, genes: list[str], target_sum: float = 1e4) -> pd.DataFrame:
    """Mean log-normalised profile of each reference category on ``genes`` (categories x genes)."""
    names, centroids = group_means(lognorm(ref[:, genes], target_sum).X, ref.obs["category"].to_numpy())
    return pd.DataFrame(centroids, index=pd.Index(names.astype(str), name="category"), columns=list(genes))


def centroid_labels(query: ad.AnnData, centroids: pd.DataFrame, target_sum: float = 1e4) -> pd.DataFrame:
    """Per cell: the reference category whose mean log profile correlates best (Pearson) on the centroids' genes."""
    genes = list(centroids.columns)
    q = sparse.csr_matrix(lognorm(query[:, genes], target_sum).X, dtype=np.float64)
    c = centroids.to_numpy(np.float64)
    c = c - c.mean(1, keepdims=True)
    c_norm = np.maximum(np.linalg.norm(c, axis=1), 1e-12)
    row_sum = np.asarray(q.sum(1)).ravel()
    row_sq = np.asarray(q.multiply(q).sum(1)).ravel()
    q_norm = np.sqrt(np.maximum(row_sq - row_sum**2 / len(genes), 0.0))
    corr = np.asarray(q @ c.T) / np.maximum(q_norm, 1e-12)[:, None] / c_norm[None, :]
    names = centroids.index.to_numpy()
    order = np.sort(corr, axis=1)
    return pd.DataFrame({"crosscheck_label": names[corr.argmax(1)], "crosscheck_r": order[:, -1],
                         "crosscheck_margin": order[:, -1] - (order[:, -2] if corr.shape[1] > 1 else 0)},
                        index=query.obs_names)


def agreement_by_category(final: pd.Series, crosscheck: pd.Series, name: str = "agreement") -> pd.DataFrame:
    """For each final category: cells, and the fraction the cross-check labels the same (column ``name``)."""
    df = pd.DataFrame({"final": final, "cross": crosscheck.reindex(final.index)})
    df["agree"] = df["final"] == df["cross"]
    out = df.groupby("final").agg(n_cells=("agree", "size"), **{name: ("agree", "mean")}).reset_index()
    return out.rename(columns={"final": "category"})


def singler_reference(ref: ad.AnnData, genes: list[str], target_sum: float = 1e4) -> ad.AnnData:
    """The atlas's sparse log-normalised expression on ``genes`` with its fine labels and categories."""
    log = lognorm(ref[:, genes], target_sum)
    obs = pd.DataFrame({"label": ref.obs["label"].astype(str).to_numpy(),
                        "category": ref.obs["category"].astype(str).to_numpy()}, index=ref.obs_names.astype(str))
    return ad.AnnData(X=sparse.csr_matrix(log.X, dtype=np.float32), obs=obs, var=pd.DataFrame(index=list(genes)))


def singler_labels(query: ad.AnnData, reference: ad.AnnData, target_sum: float = 1e4,
                   num_threads: int = 0) -> pd.DataFrame:
    """Per cell: SingleR's fine label, its category and delta (best minus next fine-tuned score)."""
    import singler

    genes = list(reference.var_names)
    q = sparse.csc_matrix(lognorm(query[:, genes], target_sum).X.T, dtype=np.float64)   # genes x cells
    r = sparse.csc_matrix(reference.X.T, dtype=np.float64)
    res = singler.annotate_single(test_data=q, test_features=genes, ref_data=r, ref_features=genes,
                                  ref_labels=reference.obs["label"].tolist(),
                                  num_threads=num_threads or os.cpu_count() or 1)
    best = np.asarray(res.get_column("best")).astype(str)
    to_category = dict(zip(reference.obs["label"], reference.obs["category"], strict=False))
    return pd.DataFrame({"singler_label": best, "singler_category": [to_category[b] for b in best],
                         "singler_delta": np.asarray(res.get_column("delta"), dtype=float)}, index=query.obs_names)
