"""An independent second classifier: correlation to reference category centroids (SingleR-style).

It never sees Tangram's output, so where both agree the label rests on two different methods.
Everything stays sparse: a cell's Pearson correlation with a centroid is its dot product with the
centred centroid over its own norm about its mean, and both come from sparse row sums.
"""

from __future__ import annotations

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


def agreement_by_category(final: pd.Series, crosscheck: pd.Series) -> pd.DataFrame:
    """For each final category: cells, and the fraction the cross-check labels the same."""
    df = pd.DataFrame({"final": final, "cross": crosscheck.reindex(final.index)})
    df["agree"] = df["final"] == df["cross"]
    out = df.groupby("final").agg(n_cells=("agree", "size"), agreement=("agree", "mean")).reset_index()
    return out.rename(columns={"final": "category"})
