"""The annotation chain stays sparse: exact sparse formulas, and no dense copy of the expression matrix.

The guard runs the real stage functions on a 40,000-cell x 2,000-gene slide (a Prime 5K-like
sparsity of ~60 genes per cell) under tracemalloc: a dense float32 copy of that matrix alone is
320 MB, so a peak below that size proves none was made. 40k cells rather than 20k because scanpy's
Wilcoxon ranks dense chunks of a fixed 10^7 values (80 MB), which a 20k x 2k matrix could not tell
apart from a copy of itself.
"""

from __future__ import annotations

import tracemalloc

import anndata as ad
import numpy as np
import pandas as pd
import polars as pl
import pytest
import scipy.sparse as sp

from sthelar_platform.annotation import clustering, counts, crosscheck
from sthelar_platform.core.config import MarkersConfig, load_config

N_CELLS, N_GENES, N_TYPES = 40_000, 2_000, 8
CFG = load_config("annotation")


def _slide(n_cells: int, n_genes: int, seed: int = 0) -> tuple[ad.AnnData, np.ndarray]:
    """Poisson counts of N_TYPES types, five private marker genes each, ~60 detected genes per cell."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, N_TYPES, n_cells)
    profile = rng.lognormal(np.log(0.01), 1.5, (N_TYPES, n_genes))
    for t in range(N_TYPES):
        profile[t, t * 5:(t + 1) * 5] = 3.0
    blocks = []
    for s in range(0, n_cells, 5000):
        mu = profile[types[s:s + 5000]]
        blocks.append(sp.csr_matrix(rng.poisson(mu / mu.sum(1, keepdims=True) * 80).astype(np.float32)))
    genes = [f"G{i:04d}" for i in range(n_genes)]
    a = ad.AnnData(X=sp.vstack(blocks, format="csr"), obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
                   var=pd.DataFrame(index=genes))
    return a, types


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def slide():
    return _slide(N_CELLS, N_GENES)


def test_centroid_correlation_equals_dense_pearson():
    a, types = _slide(300, 50, seed=1)
    ref = a.copy()
    ref.obs["category"] = [f"T{t}" for t in types]
    cen = crosscheck.reference_centroids(ref, list(a.var_names))
    got = crosscheck.centroid_labels(a, cen)
    q = clustering.lognorm(a, 1e4).X.toarray()
    c = cen.to_numpy()
    r = np.corrcoef(np.vstack([q, c]))[: len(q), len(q):]
    assert np.allclose(got["crosscheck_r"], r.max(1), atol=1e-6)
    assert (got["crosscheck_label"].to_numpy() == cen.index.to_numpy()[r.argmax(1)]).all()
    # category centroids are the category means of the log-normalised reference
    assert np.allclose(c[cen.index.get_loc("T0")], q[types == 0].mean(0), atol=1e-6)


def test_marker_scores_equal_dense_z_scores():
    a, types = _slide(400, 60, seed=2)
    a = clustering.lognorm(a, 1e4)
    clusters = pd.Series([str(t) for t in types], index=a.obs_names)
    markers = {"first": ["G0000", "G0001", "G0002"], "second": ["G0005", "G0009", "not_in_panel"]}
    table, label = clustering.score_markers(a, clusters, markers, min_score=0.25)
    x = a.X.toarray().astype(np.float64)
    z = (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)
    expect = z[types == 0][:, [0, 1, 2]].mean()
    assert table.loc["0", "first"] == pytest.approx(expect, rel=1e-6)
    assert table.loc["1", "second"] == pytest.approx(z[types == 1][:, [5, 9]].mean(), rel=1e-6)
    assert label["0"] == "first" and label["1"] == "second"


@pytest.mark.slow  # a 60,000-cell slide
def test_clustering_never_densifies_the_matrix(slide):
    a, types = slide
    dense_bytes = a.n_obs * a.n_vars * 4
    markers = MarkersConfig(genes={f"T{t}": [f"G{g:04d}" for g in range(t * 5, t * 5 + 5)] for t in range(N_TYPES)},
                            min_score=0.25)
    clustering.run_clustering(_slide(500, N_GENES, seed=9)[0], CFG.clustering, markers)  # first-call imports: not counted
    res, peak = _peak_bytes(lambda: clustering.run_clustering(a, CFG.clustering, markers))
    assert peak < dense_bytes, f"clustering peaked at {peak / 1e6:.0f} MB, a dense float32 copy is {dense_bytes / 1e6:.0f} MB"
    # and it still works: every cluster is one type and is named after it
    purity = pd.crosstab(res.clusters.to_numpy(), types).max(1).sum() / a.n_obs
    assert purity > 0.95
    majority = pd.Series(types, index=a.obs_names).groupby(res.clusters).agg(lambda t: np.bincount(t).argmax())
    assert (res.marker_label.reindex(majority.index) == [f"T{t}" for t in majority]).all()


def test_crosscheck_never_densifies_the_matrix(slide):
    a, types = slide
    ref = a[:3000].copy()
    ref.obs["category"] = [f"T{t}" for t in types[:3000]]
    cen = crosscheck.reference_centroids(ref, list(a.var_names))
    got, peak = _peak_bytes(lambda: crosscheck.centroid_labels(a, cen))
    assert peak < a.n_obs * a.n_vars * 4 / 2, f"cross-check peaked at {peak / 1e6:.0f} MB"
    assert (got["crosscheck_label"].to_numpy() == [f"T{t}" for t in types]).mean() > 0.95


def test_count_tables_stay_sparse(slide):
    a, _ = slide
    x = a.X[:10_000].tocoo()  # a quarter of the slide: 600k transcripts
    reps = x.data.astype(np.int64)
    cell_ids = list(a.obs_names[:10_000])
    genes = list(a.var_names)
    tx = pl.LazyFrame({"cell_id": np.repeat(np.array(cell_ids)[x.row], reps),
                       "feature_name": np.repeat(np.array(genes)[x.col], reps),
                       "in_nucleus": np.arange(int(reps.sum())) % 2 == 0})
    tables, peak = _peak_bytes(lambda: counts.count_tables(tx, cell_ids, genes))
    assert peak < len(cell_ids) * len(genes) * 4, f"count tables peaked at {peak / 1e6:.0f} MB"
    cell, nucleus, cyto = (tables[k].X for k in ("cell", "nucleus", "cytoplasm"))
    assert sp.issparse(cell) and (cell != a.X[:10_000]).nnz == 0
    assert (nucleus + cyto != cell).nnz == 0 and nucleus.sum() == (np.arange(int(reps.sum())) % 2 == 0).sum()
    assert nucleus.has_sorted_indices and 0 not in nucleus.data and 0 not in cyto.data


def test_wilcoxon_on_a_per_cluster_sample_finds_the_same_markers():
    a, types = _slide(6000, 200, seed=3)
    a = clustering.lognorm(a, 1e4)
    a.raw = a
    a.obs["leiden"] = pd.Categorical([str(t) for t in types])
    full = clustering.wilcoxon_markers(a.copy(), 5)
    capped = clustering.wilcoxon_markers(a.copy(), 5, max_cells_per_cluster=300, seed=0)
    for t in range(N_TYPES):
        planted = {f"G{g:04d}" for g in range(t * 5, t * 5 + 5)}
        assert set(full[full["cluster"] == str(t)]["gene"]) == planted
        assert set(capped[capped["cluster"] == str(t)]["gene"]) == planted


@pytest.mark.slow  # pynndescent compiles with numba
def test_large_slides_cluster_on_an_approximate_knn_graph_that_finds_the_same_types():
    from sklearn.metrics import adjusted_rand_score

    a, types = _slide(6000, 200, seed=4)
    exact_cfg = CFG.clustering
    approx_cfg = exact_cfg.model_copy(update={"exact_knn_max_cells": 5000})  # 6,000 cells: above the switch
    graph = clustering._knn_transformer(10, a.n_obs, approx_cfg.exact_knn_max_cells, 0).fit_transform(
        np.random.default_rng(0).normal(size=(a.n_obs, 16)).astype(np.float32))
    assert type(graph) is sp.csr_matrix and graph.shape == (a.n_obs, a.n_obs)
    assert (np.diff(graph.indptr) == 11).all() and (graph.indices[graph.indptr[:-1]] == np.arange(a.n_obs)).all()
    _, exact = clustering.cluster_cells(a, exact_cfg)
    _, approx = clustering.cluster_cells(a, approx_cfg)
    assert adjusted_rand_score(exact, approx) > 0.95
    assert adjusted_rand_score(types, approx) > 0.9
