"""The counting and annotation stages as file-in / file-out steps (what the assets call).

Each ``write_*`` reads the previous stage's folder, validates it, and writes its own folder
(which the caller makes atomic). Inputs that cannot give a meaningful answer stop with an
:class:`InputError` naming the file and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import polars as pl

from sthelar_platform.annotation import clustering, counts, crosscheck, references
from sthelar_platform.annotation import rule as annotation
from sthelar_platform.annotation import tangram as tangram_transfer
from sthelar_platform.core.categories import CategorySystem
from sthelar_platform.core.config import AnnotationConfig
from sthelar_platform.core.errors import InputError, require_readable_parquet, require_stage_output

COUNT_FILES = {"nucleus_counts": ("nucleus",), "cell_counts": ("cell", "cytoplasm")}
CENTROIDS = "reference_centroids.parquet"  # tangram_labels' copy of the atlas' category centroids
SINGLER_REFERENCE = "singler_reference.h5ad"  # ... and of its log expression on the shared genes, for SingleR


def write_counts(stage: str, xenium_dir: Path, out: Path, cfg: AnnotationConfig) -> dict:
    """``nucleus_counts`` -> nucleus.h5ad; ``cell_counts`` -> cell.h5ad + cytoplasm.h5ad."""
    tables = counts.slide_count_tables(xenium_dir, cfg["counts"]["qv_min"])
    summary = {}
    for name in COUNT_FILES[stage]:
        t = tables[name]
        t.write_h5ad(out / f"{name}.h5ad", compression="gzip")
        summary[name] = {"n_cells": int(t.n_obs), "n_genes": int(t.n_vars), "n_transcripts": int(t.X.sum()),
                         "cells_with_counts": int((t.obs["n_transcripts"] > 0).sum()),
                         "median_transcripts": float(np.median(t.obs["n_transcripts"]))}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


@dataclass(frozen=True)
class TangramOutcome:
    n_cells: int
    n_shared_genes: int
    n_training_genes: int
    reference_sha256: str
    device: str
    compartments: list[str]


def write_tangram_labels(cell_dir: Path, nucleus_dir: Path, ref_spec: references.ReferenceSpec, out: Path,
                         cfg: AnnotationConfig, categories: CategorySystem, progress=None) -> TangramOutcome:
    """Tangram labels per cell (and per nucleus) with per-category probabilities."""
    less10_max = categories.less10_max_transcripts
    tcfg = cfg["tangram"]
    ref = references.load_reference(ref_spec, categories, cfg["references"])
    cell = ad.read_h5ad(require_stage_output(cell_dir / "cell.h5ad", "cell_counts"))
    genes = tangram_transfer.shared_genes(cell, ref, cfg["references"]["min_shared_genes"], str(ref_spec.path))
    fit_genes = tangram_transfer.training_genes(ref, genes, tcfg)
    device = tangram_transfer.resolve_device(tcfg["device"])
    label_fraction = ref.obs["label"].value_counts(normalize=True)
    to_cat = dict(zip(ref.obs["label"], ref.obs["category"], strict=False))
    frames = []
    for comp in tcfg["compartments"]:
        table = cell if comp == "cell" else ad.read_h5ad(require_stage_output(nucleus_dir / "nucleus.h5ad", "nucleus_counts"))
        keep = table.obs["n_transcripts"].to_numpy() > (less10_max if comp == "cell" else 0)
        if not keep.any():
            if comp == "cell":
                raise InputError(cell_dir / "cell.h5ad", f"every cell has at most {less10_max} transcripts",
                                 "check the slide's transcripts (all Less10: nothing to annotate)")
            continue
        q = table[keep]
        scores = tangram_transfer.raw_scores(q, ref, fit_genes, tcfg, device, progress)
        hard = tangram_transfer.hard_labels(scores, label_fraction, tcfg)
        hard["category"] = [to_cat.get(lb, "Unknown") for lb in hard["label"]]
        if comp == "cell":
            lp = tangram_transfer.label_probabilities(scores, label_fraction, tcfg["mode"])
            probs = lp.T.groupby([to_cat[c] for c in scores.columns]).sum().T
            probs.index.name = "cell_id"
            probs.reset_index().to_parquet(out / "category_probabilities.parquet")
        frames.append(pd.DataFrame({"cell_id": hard.index, "compartment": comp, "label": hard["label"].astype(str),
                                    "category": hard["category"], "score": hard["score"], "margin": hard["margin"]}))
    labels = pd.concat(frames, ignore_index=True)
    labels.to_parquet(out / "tangram_labels.parquet")
    # the cross-check's reference side, so that cell_types does not read the atlas a second time
    crosscheck.reference_centroids(ref, genes, cfg["clustering"]["target_sum"]).to_parquet(out / CENTROIDS)
    if cfg["crosscheck"]["singler"]:  # on Tangram's genes: a Prime 5K panel's atlas markers, else every shared gene
        crosscheck.singler_reference(ref, fit_genes, cfg["clustering"]["target_sum"]).write_h5ad(
            out / SINGLER_REFERENCE, compression="gzip")
    outcome = TangramOutcome(n_cells=int((labels["compartment"] == "cell").sum()), n_shared_genes=len(genes),
                             n_training_genes=len(fit_genes),
                             reference_sha256=ref.uns["sha256"], device=device, compartments=list(tcfg["compartments"]))
    (out / "summary.json").write_text(json.dumps({**outcome.__dict__, "reference": str(ref_spec.path)}, indent=2))
    return outcome


def write_clusters(cell_dir: Path, out: Path, cfg: AnnotationConfig, less10_max: int) -> dict:
    """Leiden clusters of the cells above the Less10 threshold, Wilcoxon markers and marker scores."""
    cell = ad.read_h5ad(require_stage_output(cell_dir / "cell.h5ad", "cell_counts"))
    keep = cell.obs["n_transcripts"].to_numpy() > less10_max
    if keep.sum() < 3:
        raise InputError(cell_dir / "cell.h5ad", f"only {int(keep.sum())} cells have more than {less10_max} transcripts",
                         "nothing to cluster: check the slide's transcripts")
    res = clustering.run_clustering(cell[keep], cfg["clustering"], cfg["markers"])
    pd.DataFrame({"cell_id": res.clusters.index, "cluster": res.clusters.values, "pc1": res.embedding[:, 0],
                  "pc2": res.embedding[:, 1]}).to_parquet(out / "clusters.parquet")
    res.markers.to_parquet(out / "markers.parquet")
    ms = res.marker_scores.copy()
    ms.insert(0, "marker_label", res.marker_label)
    ms.index.name = "cluster"
    ms.reset_index().to_parquet(out / "marker_scores.parquet")
    summary = {"n_cells": int(keep.sum()), "n_clusters": int(res.clusters.nunique()),
               "marker_labels": {str(k): str(v) for k, v in res.marker_label.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def write_cell_types(slide_id: str, xenium_dir: Path, cell_dir: Path, tangram_dir: Path, clusters_dir: Path,
                     out: Path, cfg: AnnotationConfig, categories: CategorySystem, overrides_dir: Path) -> dict:
    """Apply the rule, harmonize, cross-check; write cell_labels / cluster_review / crosscheck tables.

    The cross-check's reference centroids come from ``tangram_labels`` (written from the same atlas read).
    """
    cats = categories
    cell = ad.read_h5ad(require_stage_output(cell_dir / "cell.h5ad", "cell_counts"))
    tg = pd.read_parquet(require_readable_parquet(tangram_dir / "tangram_labels.parquet", "tangram_labels"))
    probs = pd.read_parquet(tangram_dir / "category_probabilities.parquet").set_index("cell_id")
    cl = pd.read_parquet(require_readable_parquet(clusters_dir / "clusters.parquet", "clusters")).set_index("cell_id")
    ms = pd.read_parquet(clusters_dir / "marker_scores.parquet").set_index("cluster")
    cells = pd.DataFrame({"n_transcripts": cell.obs["n_transcripts"].to_numpy()}, index=cell.obs_names)
    cells.index.name = "cell_id"
    tg_cell = tg[tg["compartment"] == "cell"].set_index("cell_id")
    tg_nuc = tg[tg["compartment"] == "nucleus"].set_index("cell_id")
    cells["tangram_label"] = tg_cell["label"].reindex(cells.index)
    cells["tangram_category"] = tg_cell["category"].reindex(cells.index)
    cells["tangram_margin"] = tg_cell["margin"].reindex(cells.index)
    cells["tangram_nucleus_category"] = tg_nuc["category"].reindex(cells.index) if len(tg_nuc) else None
    cells["cluster"] = cl["cluster"].reindex(cells.index)
    review = annotation.decide_clusters(cells, ms["marker_label"], cfg["rule"]["flag_disagreeing_fraction"])
    overrides = annotation.load_overrides(slide_id, overrides_dir, cats)
    labels = annotation.label_cells(cells, review, probs, overrides, cats.less10_max_transcripts, cats,
                                    cfg["rule"]["keep_own_label_min_probability"])
    centroids = pd.read_parquet(require_readable_parquet(tangram_dir / CENTROIDS, "tangram_labels"))
    tangram_summary = json.loads(require_stage_output(tangram_dir / "summary.json", "tangram_labels").read_text())
    active = labels.index[labels["category"] != "Less10"]
    cross = crosscheck.centroid_labels(cell[active], centroids, cfg["clustering"]["target_sum"])
    labels = labels.join(cross)
    xy = pl.read_parquet(xenium_dir / "cells.parquet", columns=["cell_id", "x_centroid", "y_centroid"]).to_pandas()
    labels = labels.join(xy.set_index("cell_id"))
    scored = labels.loc[active]
    agree = crosscheck.agreement_by_category(scored["category"], scored["crosscheck_label"])
    overall = _overall(scored, "crosscheck_label")
    singler = _singler_crosscheck(cell[active], tangram_dir, cfg)
    if singler is not None:
        labels = labels.join(singler)
        scored = labels.loc[active]
        agree = agree.merge(crosscheck.agreement_by_category(scored["category"], scored["singler_category"],
                                                             "singler_agreement").drop(columns="n_cells"),
                            on="category", how="left")
    labels.reset_index().to_parquet(out / "cell_labels.parquet")
    review = review.merge(ms.reset_index(), on=["cluster", "marker_label"], how="left")
    top = (pd.read_parquet(clusters_dir / "markers.parquet").groupby("cluster", observed=True)["gene"]
           .apply(lambda g: ", ".join(g.head(5))).rename("top_markers"))
    review = review.merge(top, left_on="cluster", right_index=True, how="left")
    if singler is not None:
        review = review.merge(_singler_by_cluster(scored), on="cluster", how="left")
    review.to_parquet(out / "cluster_review.parquet")
    agree.to_parquet(out / "crosscheck_agreement.parquet")
    n = len(labels)
    summary = {
        "n_cells": n, "composition": annotation.composition(labels["category"]),
        "frac_unknown": float((labels["category"] == "Unknown").mean()),
        "frac_less10": float((labels["category"] == "Less10").mean()),
        "crosscheck_agreement": overall,
        "crosscheck_by_category": {r.category: round(float(r.agreement), 4) for r in agree.itertuples()},
        "singler_agreement": _overall(scored, "singler_category") if singler is not None else None,
        "singler_by_category": {r.category: round(float(r.singler_agreement), 4) for r in agree.itertuples()}
                               if singler is not None else {},
        "n_clusters": int(len(review)), "n_flagged_clusters": int(review["flagged"].sum()),
        "frac_flagged_clusters": float(review["flagged"].mean()) if len(review) else 0.0,
        "decisions": {k: int(v) for k, v in review["decision"].value_counts().items()},
        "override_file": overrides.get("path"), "reference_sha256": tangram_summary["reference_sha256"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _singler_crosscheck(active: ad.AnnData, tangram_dir: Path, cfg: AnnotationConfig) -> pd.DataFrame | None:
    """SingleR's labels of the annotated cells, when config/annotation.yaml asks for them."""
    cc = cfg["crosscheck"]
    if not cc["singler"]:
        return None
    reference = ad.read_h5ad(require_stage_output(tangram_dir / SINGLER_REFERENCE, "tangram_labels"))
    if active.n_obs == 0:
        return pd.DataFrame(columns=["singler_label", "singler_category", "singler_delta"], index=active.obs_names)
    return crosscheck.singler_labels(active, reference, cfg["clustering"]["target_sum"], cc["singler_threads"])


def _overall(scored: pd.DataFrame, column: str) -> float:
    """The fraction of annotated cells a check labels as the final category (NaN without cells)."""
    return float((scored["category"] == scored[column]).mean()) if len(scored) else float("nan")


def _singler_by_cluster(scored: pd.DataFrame) -> pd.DataFrame:
    """Per cluster: SingleR's most frequent category and the fraction of cells where it matches the final one."""
    df = scored.dropna(subset=["cluster"]).assign(agree=lambda d: d["category"] == d["singler_category"])
    if df.empty:
        return pd.DataFrame(columns=["cluster", "singler_majority", "singler_agreement"])
    out = df.groupby("cluster", observed=True).agg(
        singler_majority=("singler_category", lambda c: c.value_counts().index[0]),
        singler_agreement=("agree", "mean")).reset_index()
    return out
