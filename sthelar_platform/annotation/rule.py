"""The accept / override rule that turns Tangram and cluster evidence into harmonized labels.

Per cluster: the majority Tangram category is compared with the cluster's marker label.
Where they agree, every cell keeps its own Tangram category; where they disagree and the
markers name a category, the marker evidence wins for the whole cluster; where the markers
are silent (Unknown), Tangram stands. A cluster is flagged for review when its label is
Unknown, when nucleus- and cell-based Tangram labels disagree, or when more than
``flag_disagreeing_fraction`` of its cells disagree with its label. Cells with at most
``less10_max_transcripts`` transcripts are ``Less10``. Inside a cluster whose label Tangram
supports, a cell whose own Tangram category differs keeps it only when Tangram gives it at least
``keep_own_min_probability``; otherwise it takes the cluster's label. A reviewed per-slide override file
is applied last. Confidence = Tangram's probability of the final category for the cell x
the fraction of its cluster whose Tangram category matches the cluster label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from sthelar_platform.core.categories import CategorySystem
from sthelar_platform.core.errors import InputError
from sthelar_platform.core.ids import validate_slide_id


def _mode(s: pd.Series) -> str:
    vc = s.value_counts()
    return str(vc.index[0]) if len(vc) else "Unknown"


def decide_clusters(cells: pd.DataFrame, marker_label: pd.Series, flag_fraction: float) -> pd.DataFrame:
    """One row per cluster: the evidence, the decision and the review flags.

    ``cells`` needs columns cluster, tangram_category and optionally tangram_nucleus_category.
    """
    rows = []
    for cl, members in cells.dropna(subset=["cluster"]).groupby("cluster", sort=True):
        tg = members["tangram_category"]
        tg_major = _mode(tg)
        mk = str(marker_label.get(cl, "Unknown"))
        if mk == tg_major:
            decision, label = "agree", tg_major
        elif mk != "Unknown":
            decision, label = "marker_override", mk
        else:
            decision, label = "tangram_no_marker_evidence", tg_major
        disagree = float((tg != label).mean())
        nuc_major = None
        if "tangram_nucleus_category" in members and members["tangram_nucleus_category"].notna().any():
            nuc_major = _mode(members["tangram_nucleus_category"].dropna())
        reasons = []
        if label in ("Unknown", "Less10"):
            reasons.append(f"top label {label}")
        if nuc_major is not None and nuc_major != tg_major:
            reasons.append(f"nucleus-based label {nuc_major} vs cell-based {tg_major}")
        if disagree > flag_fraction:
            reasons.append(f"{disagree:.0%} of cells disagree with {label}")
        rows.append({"cluster": str(cl), "n_cells": len(members), "tangram_majority": tg_major,
                     "tangram_majority_fraction": float((tg == tg_major).mean()), "marker_label": mk,
                     "nucleus_majority": nuc_major, "decision": decision, "label": label,
                     "disagreeing_fraction": disagree, "flagged": bool(reasons), "flag_reasons": "; ".join(reasons)})
    return pd.DataFrame(rows, columns=["cluster", "n_cells", "tangram_majority", "tangram_majority_fraction",
                                       "marker_label", "nucleus_majority", "decision", "label",
                                       "disagreeing_fraction", "flagged", "flag_reasons"])


def load_overrides(slide_id: str, folder: Path, categories: CategorySystem) -> dict:
    """The reviewed override file of a slide (``<folder>/<slide_id>.yaml``, folder = config/overrides), or {}."""
    path = Path(folder) / f"{validate_slide_id(slide_id)}.yaml"
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML ({exc})", "fix the override file") from exc
    if not isinstance(data, dict) or not data.get("reviewed_by"):
        raise InputError(path, "override file without `reviewed_by`", "overrides must name their reviewer")
    cats = categories
    allowed = set(cats.categories) | set(cats.special_labels)
    for kind in ("clusters", "cells"):
        bad = {k: v for k, v in (data.get(kind) or {}).items() if v not in allowed}
        if bad:
            raise InputError(path, f"{kind} overridden to unknown categories {bad}", f"use one of {sorted(allowed)}")
    data["path"] = str(path)
    return data


def label_cells(cells: pd.DataFrame, clusters: pd.DataFrame, category_probs: pd.DataFrame, overrides: dict,
                less10_max: int, categories: CategorySystem, keep_own_min_probability: float = 0.0) -> pd.DataFrame:
    """Final per-cell labels with groupings and confidence.

    ``cells``: index cell_id; columns n_transcripts, cluster, tangram_label, tangram_category.
    ``category_probs``: cells x categories (Tangram probabilities summed per category).
    """
    cats = categories
    out = cells.copy()
    by_cluster = clusters.set_index("cluster")
    cl = out["cluster"].astype(object)
    decision = cl.map(by_cluster["decision"])
    cluster_label = cl.map(by_cluster["label"])
    support = 1 - cl.map(by_cluster["disagreeing_fraction"]).astype(float)
    probs = category_probs.reindex(index=out.index)
    p_own = np.array([probs.at[c, k] if k in probs.columns and c in probs.index else 0.0
                      for c, k in zip(out.index, out["tangram_category"].fillna(""), strict=True)], dtype=float)
    # in a cluster Tangram agrees with, a cell keeps a different Tangram label only when Tangram is sure of it
    weak_dissent = (decision != "marker_override") & cluster_label.notna() & (out["tangram_category"] != cluster_label) \
        & (np.nan_to_num(p_own) < keep_own_min_probability)
    use_cluster = (decision == "marker_override") | weak_dissent
    category = np.where(use_cluster, cluster_label, out["tangram_category"])
    out["category"] = pd.Series(category, index=out.index).fillna("Unknown").astype(str)
    out["label_source"] = np.where(decision == "marker_override", "cluster_markers",
                                   np.where(weak_dissent, "cluster_consensus", "tangram"))
    p_final = np.array([probs.at[c, k] if k in probs.columns and c in probs.index else 0.0
                        for c, k in zip(out.index, out["category"], strict=True)], dtype=float)
    out["confidence"] = np.nan_to_num(p_final) * support.fillna(0).to_numpy()
    out["flagged"] = cl.map(by_cluster["flagged"]).astype("boolean").fillna(False).astype(bool)
    less10 = out["n_transcripts"] <= less10_max
    out.loc[less10, ["category", "label_source"]] = ["Less10", "less10_rule"]
    for c_id, cat in (overrides.get("clusters") or {}).items():
        sel = (out["cluster"].astype(str) == str(c_id)) & ~less10
        out.loc[sel, ["category", "label_source"]] = [cat, "override"]
        out.loc[sel, "confidence"] = 1.0
    for cell_id, cat in (overrides.get("cells") or {}).items():
        if cell_id in out.index:
            out.loc[cell_id, ["category", "label_source", "confidence"]] = [cat, "override", 1.0]
    out.loc[out["category"].isin(["Unknown", "Less10"]), "confidence"] = 0.0
    for name in ("detailed", "grouped"):
        g = cats.groupings[name]
        out[f"{name}_class"] = out["category"].map(g.category_to_class)
    return out


def composition(labels: pd.Series) -> dict[str, int]:
    """Cells per label, sorted by label."""
    return {k: int(v) for k, v in labels.value_counts().sort_index().items()}
