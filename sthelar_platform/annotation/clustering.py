"""Unsupervised evidence on the slide itself: Leiden clusters, Wilcoxon markers, marker scores.

The reference pipeline's recipe (normalize_total 1e4, log1p, scale max 10, PCA, neighbors,
Leiden, Wilcoxon with BH), with every parameter in sthelar_platform/config/annotation.yaml. The expression matrix
stays sparse throughout (a 500k-cell x 5k-gene slide is 10 GB dense): genes are scaled to unit
variance without centring, PCA centres implicitly, and marker scores come from per-cluster sums.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse

from sthelar_platform.core.config.annotation import AnnotationConfig, ClusteringConfig, MarkersConfig
from sthelar_platform.core.errors import InputError, require_stage_output
from sthelar_platform.core.warehouse import CellCountsFolder, ClustersFolder


@dataclass
class Clustering:
    clusters: pd.Series          # cell id -> cluster id (str)
    markers: pd.DataFrame        # cluster, rank, gene, logfoldchange, pval_adj
    marker_scores: pd.DataFrame  # clusters x categories
    marker_label: pd.Series      # cluster -> category or Unknown
    embedding: np.ndarray        # first 2 PCs, for plots


def _knn_transformer(n_neighbors: int, n_cells: int, exact_max_cells: int, seed: int):
    """The kNN graph builder scanpy calls on the PCs; either hands back a scipy ``csr_matrix``.

    Up to ``exact_max_cells`` cells: exact (sklearn, brute force on 16 PCs; deterministic, every core, but
    quadratic in cells). Above: pynndescent's seeded approximate graph (see ``_ApproximateKNN``). The
    crossover is measured by ``benchmarks/knn_graph.py`` (recorded in annotation.yaml). scanpy 1.11
    cannot parse the ``csr_array`` that current scipy returns, hence the conversion.
    """
    if n_cells > exact_max_cells:
        return _ApproximateKNN(n_neighbors, seed)
    from sklearn.neighbors import KNeighborsTransformer

    class CsrMatrixKNN(KNeighborsTransformer):
        def transform(self, X):
            return sparse.csr_matrix(super().transform(X))

        def fit_transform(self, X, y=None):
            return sparse.csr_matrix(super().fit_transform(X, y))

    return CsrMatrixKNN(n_neighbors=n_neighbors, mode="distance", algorithm="auto")


class _ApproximateKNN:
    """pynndescent's kNN graph of the cells, each cell its own first neighbour (as sklearn's transformer).

    Only the graph is built: pynndescent's own transformer also prepares a search index, whose numba
    compilation tripled the time at 20k cells and which clustering never queries.
    """

    def __init__(self, n_neighbors: int, seed: int):
        self.n_neighbors, self.seed = n_neighbors, seed

    def get_params(self, deep: bool = True) -> dict:
        return {"n_neighbors": self.n_neighbors, "seed": self.seed}

    def fit_transform(self, X, y=None) -> sparse.csr_matrix:
        from pynndescent import NNDescent

        idx, dist = NNDescent(X, n_neighbors=self.n_neighbors + 1, random_state=self.seed, n_jobs=-1).neighbor_graph
        n = len(idx)
        return sparse.csr_matrix((dist.ravel().astype(np.float32), idx.ravel(), np.arange(0, idx.size + 1, idx.shape[1])),
                                 shape=(n, n))


def lognorm(counts: ad.AnnData, target_sum: float) -> ad.AnnData:
    """A float32 copy normalised to ``target_sum`` counts per cell and log1p-transformed."""
    a = ad.AnnData(X=counts.X.astype(np.float32), obs=pd.DataFrame(index=counts.obs_names),
                   var=pd.DataFrame(index=counts.var_names))
    sc.pp.normalize_total(a, target_sum=target_sum)
    sc.pp.log1p(a)
    return a


def group_means(x, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean row of ``x`` (sparse or dense) per group label, through a sparse indicator product."""
    names, codes = np.unique(groups, return_inverse=True)
    ind = sparse.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(len(names), len(codes)))
    sums = ind @ x
    sums = sums.toarray() if sparse.issparse(sums) else np.asarray(sums)
    return names, sums / np.bincount(codes, minlength=len(names))[:, None]


def principal_components(counts: ad.AnnData, cfg: ClusteringConfig) -> ad.AnnData:
    """Log-normalised cells (kept in ``.raw``) with their PCs in ``.obsm["X_pca"]``, sparse throughout."""
    a = lognorm(counts, cfg.target_sum)
    a.raw = a
    if a.n_vars > cfg.hvg_above_genes:
        sc.pp.highly_variable_genes(a, n_top_genes=int(min(cfg.n_top_hvg, a.n_vars)), flavor="seurat")
        a = a[:, a.var["highly_variable"].to_numpy()].copy()
    sc.pp.scale(a, zero_center=False, max_value=cfg.scale_max)  # sparse in, sparse out
    n_pcs = int(min(cfg.n_pcs, a.n_vars - 1, a.n_obs - 1))
    sc.pp.pca(a, n_comps=n_pcs, zero_center=True, random_state=cfg.seed)  # implicit centring on sparse X
    return a


def cluster_cells(counts: ad.AnnData, cfg: ClusteringConfig) -> tuple[ad.AnnData, pd.Series]:
    """Leiden clusters of the cells (log-normalized data kept in the returned AnnData)."""
    a = principal_components(counts, cfg)
    knn = _knn_transformer(min(cfg.n_neighbors, a.n_obs - 1), a.n_obs, cfg.exact_knn_max_cells, cfg.seed)
    return a, leiden_clusters(a, cfg, knn)


def leiden_clusters(a: ad.AnnData, cfg: ClusteringConfig, knn) -> pd.Series:
    """Leiden clusters of the cells on the kNN graph that ``knn`` (a transformer scanpy calls) builds on the PCs."""
    sc.pp.neighbors(a, n_pcs=a.obsm["X_pca"].shape[1], random_state=cfg.seed, transformer=knn)
    sc.tl.leiden(a, resolution=cfg.resolution, random_state=cfg.seed, flavor="igraph", n_iterations=2,
                 directed=False)
    return a.obs["leiden"].astype(str)


def wilcoxon_markers(a: ad.AnnData, n_genes: int, max_cells_per_cluster: int | None = None, seed: int = 0
                     ) -> pd.DataFrame:
    """The top Wilcoxon marker genes of each Leiden cluster, BH-adjusted.

    With ``max_cells_per_cluster``, larger clusters are ranked on a seeded random sample of that many
    cells: ranking every gene over every cell grows with cells x genes, and a few thousand cells per
    cluster already separate its markers.
    """
    groups = a.obs["leiden"]
    if groups.nunique() < 2:
        return pd.DataFrame(columns=["cluster", "rank", "gene", "logfoldchange", "pval_adj"])
    if max_cells_per_cluster and groups.value_counts().max() > max_cells_per_cluster:
        rng = np.random.default_rng(seed)
        codes = groups.to_numpy()
        keep = np.concatenate([rng.permutation(np.flatnonzero(codes == g))[:max_cells_per_cluster]
                               for g in groups.cat.categories if (codes == g).any()])
        keep = np.sort(keep)
        raw = a.raw if a.raw is not None else a
        # only the ranked values and the groups: no copy of the graphs, PCs or scaled matrix
        a = ad.AnnData(X=raw.X[keep], obs=pd.DataFrame({"leiden": groups.iloc[keep].to_numpy()},
                                                       index=a.obs_names[keep]),
                       var=pd.DataFrame(index=raw.var_names))
        a.obs["leiden"] = a.obs["leiden"].astype("category")
    sc.tl.rank_genes_groups(a, "leiden", method="wilcoxon", use_raw=a.raw is not None, corr_method="benjamini-hochberg")
    df = sc.get.rank_genes_groups_df(a, group=None)
    df = df.rename(columns={"group": "cluster", "names": "gene", "logfoldchanges": "logfoldchange", "pvals_adj": "pval_adj"})
    df["rank"] = df.groupby("cluster", observed=True).cumcount()
    return df[df["rank"] < n_genes][["cluster", "rank", "gene", "logfoldchange", "pval_adj"]].reset_index(drop=True)


def score_markers(a: ad.AnnData, clusters: pd.Series, markers: dict[str, list[str]], min_score: float
                  ) -> tuple[pd.DataFrame, pd.Series]:
    """Mean z-scored log expression of each category's markers, per cluster; best category or Unknown.

    A cluster's mean z-score of a gene is (cluster mean - mean) / sd, so only per-cluster sums of the
    marker columns are needed, never a dense or z-scored copy of the matrix.
    """
    x = a.raw.X if a.raw is not None else a.X
    genes = pd.Index(a.raw.var_names if a.raw is not None else a.var_names)
    wanted = {cat: [g for g in gl if g in genes] for cat, gl in markers.items()}
    used = sorted({g for gl in wanted.values() for g in gl})
    cols = sparse.csr_matrix(x[:, genes.get_indexer(used)], dtype=np.float64) if used else sparse.csr_matrix((a.n_obs, 0))
    mean = np.asarray(cols.mean(0)).ravel()
    sd = np.sqrt(np.maximum(np.asarray(cols.multiply(cols).mean(0)).ravel() - mean**2, 0.0))
    names, cluster_means = group_means(cols, clusters.reindex(a.obs_names).astype(str).to_numpy())
    z = (cluster_means - mean) / np.maximum(sd, 1e-6)
    pos = {g: i for i, g in enumerate(used)}
    scores = {cat: z[:, [pos[g] for g in gl]].mean(1) for cat, gl in wanted.items() if gl}
    table = pd.DataFrame(scores, index=pd.Index(names.astype(str)))
    best = table.idxmax(1)
    label = best.where(table.max(1) >= min_score, "Unknown")
    return table, label


def run_clustering(counts: ad.AnnData, cfg: ClusteringConfig, markers_cfg: MarkersConfig) -> Clustering:
    """Leiden clusters, their marker genes and marker-based labels on the slide's own expression."""
    a, clusters = cluster_cells(counts, cfg)
    markers = wilcoxon_markers(a, cfg.n_marker_genes, cfg.wilcoxon_max_cells_per_cluster, cfg.seed)
    scores, label = score_markers(a, clusters, markers_cfg.genes, markers_cfg.min_score)
    return Clustering(clusters=clusters, markers=markers, marker_scores=scores, marker_label=label,
                      embedding=np.asarray(a.obsm["X_pca"][:, :2]))


@dataclass(frozen=True)
class ClustersSummary:
    n_cells: int
    n_clusters: int
    marker_labels: dict[str, str]      # cluster -> the category its marker scores point to


def write_clusters(cell_dir: Path, out: Path, cfg: AnnotationConfig, less10_max: int) -> ClustersSummary:
    """Leiden clusters of the cells above the Less10 threshold, Wilcoxon markers and marker scores."""
    counts_in, folder = CellCountsFolder(cell_dir), ClustersFolder(out)
    cell = ad.read_h5ad(require_stage_output(counts_in.cell, counts_in.stage))
    keep = cell.obs["n_transcripts"].to_numpy() > less10_max
    if keep.sum() < 3:
        raise InputError(counts_in.cell, f"only {int(keep.sum())} cells have more than {less10_max} transcripts",
                         "nothing to cluster: check the slide's transcripts")
    res = run_clustering(cell[keep], cfg.clustering, cfg.markers)
    pd.DataFrame({"cell_id": res.clusters.index, "cluster": res.clusters.values, "pc1": res.embedding[:, 0],
                  "pc2": res.embedding[:, 1]}).to_parquet(folder.clusters)
    res.markers.to_parquet(folder.markers)
    ms = res.marker_scores.copy()
    ms.insert(0, "marker_label", res.marker_label)
    ms.index.name = "cluster"
    ms.reset_index().to_parquet(folder.marker_scores)
    summary = ClustersSummary(n_cells=int(keep.sum()), n_clusters=int(res.clusters.nunique()),
                              marker_labels={str(k): str(v) for k, v in res.marker_label.items()})
    folder.summary.write_text(json.dumps(asdict(summary), indent=2))
    return summary
