"""Tangram label transfer from a reference atlas onto the slide's cells (tangram-sc, real).

Cells are mapped in bags (``bag_size``) against the reference restricted to the genes it
shares with the panel. Hard labels follow the reference pipeline: per reference label, the
scores are clipped to their 5th-95th percentile over the slide and min-max scaled, then the
argmax wins; the margin between the two best scaled scores is kept as evidence.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

from sthelar_platform.core.config import TangramConfig
from sthelar_platform.core.errors import InputError


def resolve_device(name: str) -> str:
    """The torch device for Tangram; asking for CUDA where there is none is an InputError."""
    import torch

    if name == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(None, f"tangram device {name!r} requested but CUDA is not available",
                         "set tangram.device to auto or cpu in config/annotation.yaml")
    return name


def _lognorm(a: ad.AnnData) -> ad.AnnData:
    a = a.copy()
    a.X = a.X.astype(np.float32)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return a


def shared_genes(query: ad.AnnData, ref: ad.AnnData, minimum: int, ref_name: str) -> list[str]:
    """Genes in both the panel and the atlas; too few to transfer labels is an InputError."""
    genes = sorted(set(query.var_names) & set(ref.var_names))
    if len(genes) < minimum:
        raise InputError(ref_name, f"only {len(genes)} genes shared with the Xenium panel (minimum {minimum})",
                         "use an atlas measured on more of the panel's genes (gene symbols must match)")
    return genes


def training_genes(ref: ad.AnnData, shared: list[str], cfg: TangramConfig) -> list[str]:
    """The genes Tangram fits on: every shared gene, or for a large panel the atlas labels' top markers.

    Fitting on thousands of mostly uninformative genes costs time in proportion and dilutes the
    cosine-similarity objective; the markers are ranked on the (small) atlas, never on the slide.
    """
    if len(shared) <= cfg["markers_above_genes"]:
        return shared
    r = _lognorm(ref[:, shared])
    sc.tl.rank_genes_groups(r, "label", method="wilcoxon", n_genes=int(cfg["markers_per_label"]), use_raw=False)
    names = r.uns["rank_genes_groups"]["names"]
    return sorted({str(g) for label in names.dtype.names for g in names[label]})


def _stratified_subsample(ref: ad.AnnData, n: int, rng: np.random.Generator) -> ad.AnnData:
    if ref.n_obs <= n:
        return ref
    labels = ref.obs["label"].to_numpy()
    keep = []
    for lb in np.unique(labels):
        idx = np.flatnonzero(labels == lb)
        k = max(1, int(round(n * len(idx) / ref.n_obs)))
        keep.append(rng.choice(idx, min(k, len(idx)), replace=False))
    return ref[np.sort(np.concatenate(keep))]


def raw_scores(query: ad.AnnData, ref: ad.AnnData, genes: list[str], cfg: TangramConfig, device: str,
               progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Tangram scores (cells x reference labels) before scaling, bag by bag."""
    import tangram as tg

    rng = np.random.default_rng(cfg["seed"])
    q = _lognorm(query[:, genes])
    r_all = _lognorm(ref[:, genes])
    order = rng.permutation(q.n_obs)  # random bags: no bag is one tissue region
    n_bags = max(1, int(np.ceil(q.n_obs / cfg["bag_size"])))
    labels = sorted(r_all.obs["label"].unique())
    out = np.zeros((q.n_obs, len(labels)), np.float32)
    logging.getLogger("root").setLevel(logging.WARNING)  # tangram logs every epoch at INFO
    for b, idx in enumerate(np.array_split(order, n_bags)):
        bag = q[np.sort(idx)].copy()
        r = _stratified_subsample(r_all, cfg["reference_subsample"], rng).copy() if cfg["mode"] == "cells" else r_all.copy()
        tg.pp_adatas(r, bag, genes=None)
        kw = {"cluster_label": "label"} if cfg["mode"] == "clusters" else {}
        amap = tg.map_cells_to_space(r, bag, mode=cfg["mode"], device=device, num_epochs=cfg["num_epochs"],
                                     learning_rate=cfg["learning_rate"], random_state=cfg["seed"], verbose=False, **kw)
        tg.project_cell_annotations(amap, bag, annotation="label")
        pred = bag.obsm["tangram_ct_pred"].reindex(columns=labels, fill_value=0.0)
        pos = pd.Index(q.obs_names).get_indexer(bag.obs_names)
        out[pos] = pred.to_numpy(np.float32)
        if progress:
            progress(b + 1, n_bags)
    return pd.DataFrame(out, index=q.obs_names, columns=labels)


def label_probabilities(scores: pd.DataFrame, label_fraction: pd.Series, mode: str) -> pd.DataFrame:
    """Per-cell probability of each reference label.

    In "clusters" mode each label's mapping is a distribution over cells, so scores are weighted
    by the label's share of the reference (expected number of cells of that label at each cell)
    before normalizing per cell.
    """
    s = scores.to_numpy(np.float64)
    if mode == "clusters":
        s = s * label_fraction.reindex(scores.columns).fillna(0).to_numpy()[None, :]
    return pd.DataFrame(s / np.maximum(s.sum(1, keepdims=True), 1e-12), index=scores.index, columns=scores.columns)


def hard_labels(scores: pd.DataFrame, label_fraction: pd.Series, cfg: TangramConfig) -> pd.DataFrame:
    """Per-cell label, its score and the margin over the runner-up.

    ``row_normalized`` (default) uses :func:`label_probabilities`; ``clip_minmax`` is the reference
    pipeline's rule for "cells" mode: clip each label to percentiles, min-max scale, argmax.
    """
    if cfg["scoring"] == "clip_minmax":
        s = scores.to_numpy(np.float64)
        clip = cfg["clip_percentiles"]
        lo, hi = np.percentile(s, clip[0], axis=0), np.percentile(s, clip[1], axis=0)
        p = (np.clip(s, lo, hi) - lo) / np.where(hi > lo, hi - lo, 1.0)
    else:
        p = label_probabilities(scores, label_fraction, cfg["mode"]).to_numpy()
    top2 = np.sort(p, axis=1)[:, -2:] if p.shape[1] > 1 else np.c_[np.zeros(len(p)), p]
    label = np.asarray(scores.columns)[p.argmax(1)].astype(object)
    label[top2[:, 1] < cfg["min_score"]] = "Unknown"
    return pd.DataFrame({"label": label, "score": top2[:, 1], "margin": top2[:, 1] - top2[:, 0]}, index=scores.index)
