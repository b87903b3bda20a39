"""Exact against approximate kNN graphs on a slide's PCs: time per size, recall and Leiden agreement.

Usage: python benchmarks/knn_graph.py --home HOME [--size xl] [--cells 110000 510111] [--out FILE.json]

Needs a bench slide's `cell_counts` step (`sthelar bench --size xl --stage ingest --stage annotation`).
Computes the clustering's PCs once (cells above the Less10 threshold), then builds each graph in a
fresh process, as an asset run would (pynndescent's numba compilation is paid once per process).
Sets `clustering.exact_knn_max_cells` in sthelar_platform/config/annotation.yaml.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import bench_slide, emit, peak_rss_mb  # noqa: E402

METHODS = {"exact": 10**12, "approximate": 0}  # exact_knn_max_cells that forces each builder


def _build_one(method: str, pcs: Path, n_cells: int, graph_out: Path) -> None:
    """In a fresh process: build one graph on the first ``n_cells`` PCs and save it."""
    from scipy import sparse

    from sthelar_platform.annotation.clustering import _knn_transformer
    from sthelar_platform.core.config import load_config

    cfg = load_config("annotation").clustering
    x = np.load(pcs)[:n_cells]
    start = time.perf_counter()
    graph = _knn_transformer(cfg.n_neighbors, len(x), METHODS[method], cfg.seed).fit_transform(x)
    seconds = time.perf_counter() - start
    sparse.save_npz(graph_out, graph)
    # VmHWM, not ru_maxrss: Linux carries the parent's ru_maxrss across fork and exec
    hwm_kb = int(next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM")).split()[1])
    print(json.dumps({"seconds": round(seconds, 2), "peak_rss_mb": round(hwm_kb / 1024, 1)}))


def _recall(exact, approx) -> float:
    """Share of each cell's exact neighbours that the approximate graph also found."""
    return float(np.mean([len(np.intersect1d(exact.indices[exact.indptr[i]:exact.indptr[i + 1]],
                                             approx.indices[approx.indptr[i]:approx.indptr[i + 1]]))
                          / (exact.indptr[i + 1] - exact.indptr[i]) for i in range(exact.shape[0])]))


def _leiden_agreement(pcs: np.ndarray, graphs: dict, cfg) -> float:
    """Adjusted Rand index between the Leiden clusters of the exact and the approximate graph."""
    import anndata as ad
    from sklearn.metrics import adjusted_rand_score

    from sthelar_platform.annotation.clustering import leiden_clusters

    labels = {method: leiden_clusters(ad.AnnData(obsm={"X_pca": pcs}), cfg, _Precomputed(graph, cfg.n_neighbors))
              for method, graph in graphs.items()}
    return float(adjusted_rand_score(labels["exact"], labels["approximate"]))


class _Precomputed:
    """A transformer that hands scanpy an already built kNN graph."""

    def __init__(self, graph, n_neighbors: int):
        self.graph, self.n_neighbors = graph, n_neighbors

    def get_params(self, deep: bool = True) -> dict:
        return {"n_neighbors": self.n_neighbors}

    def fit_transform(self, X, y=None):
        return self.graph


def main(argv: list[str] | None = None) -> int:
    """PCs once, then each graph builder at each size in its own process; recall and Leiden agreement."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", type=Path)
    p.add_argument("--size", default="xl", help="the `sthelar bench` size whose cell counts to use")
    p.add_argument("--cells", type=int, nargs="+", default=[110_000, 510_111])
    p.add_argument("--out", type=Path)
    p.add_argument("--one", nargs=4, metavar=("METHOD", "PCS", "N", "GRAPH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        _build_one(args.one[0], Path(args.one[1]), int(args.one[2]), Path(args.one[3]))
        return 0
    if args.home is None:
        p.error("--home is required")
    import anndata as ad
    from scipy import sparse

    from sthelar_platform.annotation.clustering import principal_components
    from sthelar_platform.core.config import load_categories, load_config
    from sthelar_platform.core.warehouse import CellCountsFolder

    cfg = load_config("annotation").clustering
    layout, spec = bench_slide(args.home, args.size)
    counts_path = layout.folder(CellCountsFolder, spec.slide_id).cell
    cell = ad.read_h5ad(counts_path)
    cell = cell[cell.obs["n_transcripts"].to_numpy() > load_categories().less10_max_transcripts].copy()
    start = time.perf_counter()
    pcs = np.ascontiguousarray(principal_components(cell, cfg).obsm["X_pca"], dtype=np.float32)
    pca_s = time.perf_counter() - start
    report: dict = {"counts": str(counts_path), "n_cells": len(pcs), "n_genes": cell.n_vars, "n_pcs": pcs.shape[1],
                    "pca_seconds": round(pca_s, 1), "n_neighbors": cfg.n_neighbors, "sizes": []}
    del cell
    with tempfile.TemporaryDirectory() as tmp:
        pcs_path = Path(tmp) / "pcs.npy"
        np.save(pcs_path, pcs)
        for n in [min(n, len(pcs)) for n in args.cells]:
            row: dict = {"n_cells": n}
            graphs = {}
            for method in METHODS:
                graph_path = Path(tmp) / f"{method}_{n}.npz"
                out = subprocess.run([sys.executable, __file__, "--one", method, str(pcs_path), str(n), str(graph_path)],
                                     check=True, capture_output=True, text=True, cwd=ROOT)
                row[method] = json.loads(out.stdout.strip().splitlines()[-1])
                graphs[method] = sparse.load_npz(graph_path).tocsr()
            row["recall_of_exact_neighbours"] = round(_recall(graphs["exact"], graphs["approximate"]), 4)
            row["leiden_ari_exact_vs_approximate"] = round(_leiden_agreement(pcs[:n], graphs, cfg), 4)
            report["sizes"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    report["peak_rss_mb"] = peak_rss_mb()
    report["command"] = "python benchmarks/knn_graph.py " + " ".join(argv if argv is not None else sys.argv[1:])
    return emit(report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
