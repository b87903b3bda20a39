"""The ``cell_types`` stage: the rule over Tangram and the clusters, harmonized labels, the cross-checks, and
the thresholds a slide's annotation is judged by.

Reads the ``cell_counts``, ``tangram_labels`` and ``clusters`` folders and writes its own (which the caller
makes atomic); an input that cannot give a meaningful answer stops with an :class:`InputError` naming the file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anndata as ad
import pandas as pd
import polars as pl

from sthelar_platform.annotation import crosscheck
from sthelar_platform.annotation import rule as annotation
from sthelar_platform.core.categories import CategorySystem
from sthelar_platform.core.config.annotation import AnnotationChecksConfig, AnnotationConfig
from sthelar_platform.core.errors import require_readable_parquet, require_stage_output
from sthelar_platform.core.warehouse import (
    CellCountsFolder,
    CellTypesFolder,
    ClustersFolder,
    TangramLabelsFolder,
    XeniumSlideFolder,
)


@dataclass(frozen=True)
class CellTypesSummary:
    """A slide's annotation in numbers (``summary.json`` of ``cell_types``)."""

    n_cells: int
    composition: dict[str, int]
    frac_unknown: float
    frac_less10: float
    crosscheck_agreement: float
    crosscheck_by_category: dict[str, float]
    singler_agreement: float | None
    singler_by_category: dict[str, float]
    n_clusters: int
    n_flagged_clusters: int
    frac_flagged_clusters: float
    decisions: dict[str, int]
    override_file: str | None
    reference_sha256: str
    extra: dict[str, object] = field(default_factory=dict)

    def write(self, path: Path) -> None:
        d = asdict(self)
        d.update(d.pop("extra"))
        path.write_text(json.dumps(d, indent=2))

    @classmethod
    def read(cls, path: Path) -> CellTypesSummary:
        d = json.loads(require_stage_output(path, CellTypesFolder.stage).read_text())
        known = set(cls.__dataclass_fields__) - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in known}, extra={k: v for k, v in d.items() if k not in known})


@dataclass(frozen=True)
class CellTypesResult:
    summary: CellTypesSummary
    review: pd.DataFrame               # one row per cluster: decision, label, flags (cluster_review.parquet)


def annotation_failures(summary: CellTypesSummary, t: AnnotationChecksConfig) -> list[str]:
    """Why a slide's annotation breaks the thresholds in annotation.yaml ``checks`` (empty when it passes)."""
    out = []
    if summary.frac_unknown > t.max_frac_unknown:
        out.append(f"{summary.frac_unknown:.1%} Unknown cells (max {t.max_frac_unknown:.0%})")
    if summary.frac_less10 > t.max_frac_less10:
        out.append(f"{summary.frac_less10:.1%} Less10 cells (max {t.max_frac_less10:.0%})")
    if not summary.crosscheck_agreement >= t.min_crosscheck_agreement:
        out.append(f"cross-check agreement {summary.crosscheck_agreement:.1%} (min {t.min_crosscheck_agreement:.0%})")
    if summary.frac_flagged_clusters > t.max_frac_flagged_clusters:
        out.append(f"{summary.frac_flagged_clusters:.0%} of clusters flagged (max {t.max_frac_flagged_clusters:.0%})")
    return out


def write_cell_types(slide_id: str, xenium_dir: Path, cell_dir: Path, tangram_dir: Path, clusters_dir: Path,
                     out: Path, cfg: AnnotationConfig, categories: CategorySystem, overrides_dir: Path) -> CellTypesResult:
    """Apply the rule, harmonize, cross-check; write cell_labels / cluster_review / crosscheck tables.

    The cross-check's reference centroids come from ``tangram_labels`` (written from the same atlas read).
    """
    cats = categories
    xen, counts_in = XeniumSlideFolder(xenium_dir), CellCountsFolder(cell_dir)
    tangram, clusters, folder = TangramLabelsFolder(tangram_dir), ClustersFolder(clusters_dir), CellTypesFolder(out)
    cell = ad.read_h5ad(require_stage_output(counts_in.cell, counts_in.stage))
    tg = pd.read_parquet(require_readable_parquet(tangram.labels, tangram.stage))
    probs = pd.read_parquet(tangram.category_probabilities).set_index("cell_id")
    cl = pd.read_parquet(require_readable_parquet(clusters.clusters, clusters.stage)).set_index("cell_id")
    ms = pd.read_parquet(clusters.marker_scores).set_index("cluster")
    cells = pd.DataFrame({"n_transcripts": cell.obs["n_transcripts"].to_numpy()}, index=cell.obs_names)
    cells.index.name = "cell_id"
    tg_cell = tg[tg["compartment"] == "cell"].set_index("cell_id")
    tg_nuc = tg[tg["compartment"] == "nucleus"].set_index("cell_id")
    cells["tangram_label"] = tg_cell["label"].reindex(cells.index)
    cells["tangram_category"] = tg_cell["category"].reindex(cells.index)
    cells["tangram_margin"] = tg_cell["margin"].reindex(cells.index)
    cells["tangram_nucleus_category"] = tg_nuc["category"].reindex(cells.index) if len(tg_nuc) else None
    cells["cluster"] = cl["cluster"].reindex(cells.index)
    review = annotation.decide_clusters(cells, ms["marker_label"], cfg.rule.flag_disagreeing_fraction)
    overrides = annotation.load_overrides(slide_id, overrides_dir, cats)
    labels = annotation.label_cells(cells, review, probs, overrides, cats.less10_max_transcripts, cats,
                                    cfg.rule.keep_own_label_min_probability)
    centroids = pd.read_parquet(require_readable_parquet(tangram.centroids, tangram.stage))
    tangram_summary = json.loads(require_stage_output(tangram.summary, tangram.stage).read_text())
    active = labels.index[labels["category"] != "Less10"]
    cross = crosscheck.centroid_labels(cell[active], centroids, cfg.clustering.target_sum)
    labels = labels.join(cross)
    xy = pl.read_parquet(xen.cells, columns=["cell_id", "x_centroid", "y_centroid"]).to_pandas()
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
    labels.reset_index().to_parquet(folder.cell_labels)
    review = review.merge(ms.reset_index(), on=["cluster", "marker_label"], how="left")
    top = (pd.read_parquet(clusters.markers).groupby("cluster", observed=True)["gene"]
           .apply(lambda g: ", ".join(g.head(5))).rename("top_markers"))
    review = review.merge(top, left_on="cluster", right_index=True, how="left")
    if singler is not None:
        review = review.merge(_singler_by_cluster(scored), on="cluster", how="left")
    review.to_parquet(folder.cluster_review)
    agree.to_parquet(folder.crosscheck_agreement)
    n = len(labels)
    summary = CellTypesSummary(
        n_cells=n, composition=annotation.composition(labels["category"]),
        frac_unknown=float((labels["category"] == "Unknown").mean()),
        frac_less10=float((labels["category"] == "Less10").mean()),
        crosscheck_agreement=overall,
        crosscheck_by_category={r.category: round(float(r.agreement), 4) for r in agree.itertuples()},
        singler_agreement=_overall(scored, "singler_category") if singler is not None else None,
        singler_by_category={r.category: round(float(r.singler_agreement), 4) for r in agree.itertuples()}
                            if singler is not None else {},
        n_clusters=int(len(review)), n_flagged_clusters=int(review["flagged"].sum()),
        frac_flagged_clusters=float(review["flagged"].mean()) if len(review) else 0.0,
        decisions={k: int(v) for k, v in review["decision"].value_counts().items()},
        override_file=overrides.get("path"), reference_sha256=tangram_summary["reference_sha256"],
    )
    summary.write(folder.summary)
    return CellTypesResult(summary, review)


def _singler_crosscheck(active: ad.AnnData, tangram_dir: Path, cfg: AnnotationConfig) -> pd.DataFrame | None:
    """SingleR's labels of the annotated cells, when sthelar_platform/config/annotation.yaml asks for them."""
    cc = cfg.crosscheck
    if not cc.singler:
        return None
    tangram = TangramLabelsFolder(tangram_dir)
    reference = ad.read_h5ad(require_stage_output(tangram.singler_reference, tangram.stage))
    if active.n_obs == 0:
        return pd.DataFrame(columns=["singler_label", "singler_category", "singler_delta"], index=active.obs_names)
    return crosscheck.singler_labels(active, reference, cfg.clustering.target_sum, cc.singler_threads)


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
