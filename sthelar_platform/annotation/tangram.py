"""Tangram label transfer from a reference atlas onto the slide's cells (tangram-sc, real).

Cells are mapped in bags (``bag_size``) against the reference restricted to the genes it
shares with the panel. Hard labels follow the reference pipeline: per reference label, the
scores are clipped to their 5th-95th percentile over the slide and min-max scaled, then the
argmax wins; the margin between the two best scaled scores is kept as evidence.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

from sthelar_platform.annotation import crosscheck, references
from sthelar_platform.core.categories import CategorySystem
from sthelar_platform.core.config.annotation import AnnotationConfig, TangramConfig
from sthelar_platform.core.errors import ConfigError, InputError, require_stage_output
from sthelar_platform.core.warehouse import CellCountsFolder, NucleusCountsFolder, TangramLabelsFolder


def resolve_device(name: str) -> str:
    """The torch device for Tangram; asking for CUDA where there is none is an InputError."""
    import torch

    if name == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("annotation.yaml", "tangram.device", f"{name!r} requested but CUDA is not available",
                          "set it to auto or cpu")
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
    if len(shared) <= cfg.markers_above_genes:
        return shared
    r = _lognorm(ref[:, shared])
    sc.tl.rank_genes_groups(r, "label", method="wilcoxon", n_genes=int(cfg.markers_per_label), use_raw=False)
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

    rng = np.random.default_rng(cfg.seed)
    q = _lognorm(query[:, genes])
    r_all = _lognorm(ref[:, genes])
    order = rng.permutation(q.n_obs)  # random bags: no bag is one tissue region
    n_bags = max(1, int(np.ceil(q.n_obs / cfg.bag_size)))
    labels = sorted(r_all.obs["label"].unique())
    out = np.zeros((q.n_obs, len(labels)), np.float32)
    logging.getLogger("root").setLevel(logging.WARNING)  # tangram logs every epoch at INFO
    for b, idx in enumerate(np.array_split(order, n_bags)):
        bag = q[np.sort(idx)].copy()
        r = _stratified_subsample(r_all, cfg.reference_subsample, rng).copy() if cfg.mode == "cells" else r_all.copy()
        tg.pp_adatas(r, bag, genes=None)
        kw = {"cluster_label": "label"} if cfg.mode == "clusters" else {}
        amap = tg.map_cells_to_space(r, bag, mode=cfg.mode, device=device, num_epochs=cfg.num_epochs,
                                     learning_rate=cfg.learning_rate, random_state=cfg.seed, verbose=False, **kw)
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
    if cfg.scoring == "clip_minmax":
        s = scores.to_numpy(np.float64)
        clip = cfg.clip_percentiles
        lo, hi = np.percentile(s, clip[0], axis=0), np.percentile(s, clip[1], axis=0)
        p = (np.clip(s, lo, hi) - lo) / np.where(hi > lo, hi - lo, 1.0)
    else:
        p = label_probabilities(scores, label_fraction, cfg.mode).to_numpy()
    top2 = np.sort(p, axis=1)[:, -2:] if p.shape[1] > 1 else np.c_[np.zeros(len(p)), p]
    label = np.asarray(scores.columns)[p.argmax(1)].astype(object)
    label[top2[:, 1] < cfg.min_score] = "Unknown"
    return pd.DataFrame({"label": label, "score": top2[:, 1], "margin": top2[:, 1] - top2[:, 0]}, index=scores.index)


@dataclass(frozen=True)
class TangramOutcome:
    n_cells: int
    n_shared_genes: int
    n_training_genes: int
    reference_sha256: str
    device: str
    compartments: list[str]


def write_tangram_labels(cell_dir: Path, nucleus_dir: Path, ref_spec: references.ReferenceSpec, out: Path,
                         cfg: AnnotationConfig, categories: CategorySystem,
                         progress: Callable[[int, int], None] | None = None) -> TangramOutcome:
    """Tangram labels per cell (and per nucleus) with per-category probabilities."""
    less10_max = categories.less10_max_transcripts
    tcfg = cfg.tangram
    counts_in, nuclei_in, folder = CellCountsFolder(cell_dir), NucleusCountsFolder(nucleus_dir), TangramLabelsFolder(out)
    ref = references.load_reference(ref_spec, categories, cfg.references)
    cell = ad.read_h5ad(require_stage_output(counts_in.cell, counts_in.stage))
    genes = shared_genes(cell, ref, cfg.references.min_shared_genes, str(ref_spec.path))
    fit_genes = training_genes(ref, genes, tcfg)
    device = resolve_device(tcfg.device)
    label_fraction = ref.obs["label"].value_counts(normalize=True)
    to_cat = dict(zip(ref.obs["label"], ref.obs["category"], strict=False))
    frames = []
    for comp in tcfg.compartments:
        table = cell if comp == "cell" else ad.read_h5ad(require_stage_output(nuclei_in.nucleus, nuclei_in.stage))
        keep = table.obs["n_transcripts"].to_numpy() > (less10_max if comp == "cell" else 0)
        if not keep.any():
            if comp == "cell":
                raise InputError(counts_in.cell, f"every cell has at most {less10_max} transcripts",
                                 "check the slide's transcripts (all Less10: nothing to annotate)")
            continue
        q = table[keep]
        scores = raw_scores(q, ref, fit_genes, tcfg, device, progress)
        hard = hard_labels(scores, label_fraction, tcfg)
        hard["category"] = [to_cat.get(lb, "Unknown") for lb in hard["label"]]
        if comp == "cell":
            lp = label_probabilities(scores, label_fraction, tcfg.mode)
            probs = lp.T.groupby([to_cat[c] for c in scores.columns]).sum().T
            probs.index.name = "cell_id"
            probs.reset_index().to_parquet(folder.category_probabilities)
        frames.append(pd.DataFrame({"cell_id": hard.index, "compartment": comp, "label": hard["label"].astype(str),
                                    "category": hard["category"], "score": hard["score"], "margin": hard["margin"]}))
    labels = pd.concat(frames, ignore_index=True)
    labels.to_parquet(folder.labels)
    # the cross-check's reference side, so that cell_types does not read the atlas a second time
    crosscheck.reference_centroids(ref, genes, cfg.clustering.target_sum).to_parquet(folder.centroids)
    if cfg.crosscheck.singler:  # on Tangram's genes: a Prime 5K panel's atlas markers, else every shared gene
        crosscheck.singler_reference(ref, fit_genes, cfg.clustering.target_sum).write_h5ad(
            folder.singler_reference, compression="gzip")
    outcome = TangramOutcome(n_cells=int((labels["compartment"] == "cell").sum()), n_shared_genes=len(genes),
                             n_training_genes=len(fit_genes),
                             reference_sha256=ref.uns["sha256"], device=device, compartments=list(tcfg.compartments))
    folder.summary.write_text(json.dumps({**outcome.__dict__, "reference": str(ref_spec.path)}, indent=2))
    return outcome
