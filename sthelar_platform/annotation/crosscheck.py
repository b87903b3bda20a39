"""An independent second classifier: correlation to reference category centroids (SingleR-style).

It never sees Tangram's output, so where both agree the label rests on two different methods.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from sthelar_platform.annotation.clustering import lognorm


def centroid_labels(query: ad.AnnData, ref: ad.AnnData, genes: list[str], target_sum: float = 1e4) -> pd.DataFrame:
    """Per cell: the reference category whose mean log profile correlates best (Pearson) on shared genes."""
    q = lognorm(query[:, genes], target_sum).X
    r = lognorm(ref[:, genes], target_sum)
    cats = ref.obs["category"].to_numpy()
    names = np.unique(cats)
    rx = r.X.toarray() if hasattr(r.X, "toarray") else np.asarray(r.X)
    centroids = np.stack([rx[cats == c].mean(0) for c in names])
    q = q.toarray() if hasattr(q, "toarray") else np.asarray(q)

    def standardize(m: np.ndarray) -> np.ndarray:
        m = m - m.mean(1, keepdims=True)
        return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)

    corr = standardize(q) @ standardize(centroids).T
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
