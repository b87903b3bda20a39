"""Counting and annotation assets: counts per nucleus / cell / cytoplasm, Tangram, clusters,
harmonized cell types, and their checks (Great Expectations inside @asset_check).
"""


import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from assets._runtime import code_version_of, compute_class, md_image, run_slide_stage
from assets.annotation.reference_atlas import REBUILD_ON_CHANGE, reference_atlas
from assets.ingest import xenium_slide
from assets.partitions import slides_partitions
from resources import LineageResource, SlideCatalogResource, StorageResource
from sthelar_platform.annotation import clustering, counts, crosscheck, references
from sthelar_platform.annotation import rule as annotation
from sthelar_platform.annotation import stages as annotation_stages
from sthelar_platform.annotation import tangram as tangram_transfer
from sthelar_platform.core import validation
from sthelar_platform.core.config import load_categories, load_config, overrides_dir
from sthelar_platform.core.ids import validate_slide_id
from sthelar_platform.core.plots import category_map_png


def _counts_asset(stage: str, description: str):
    @asset(
        **compute_class(stage),
        name=stage,
        partitions_def=slides_partitions,
        deps=[xenium_slide],
        code_version=code_version_of(counts, annotation_stages.write_counts, configs=("annotation",)),
        group_name="annotation",
        kinds={"python", "anndata"},
        description=description,
    )
    def _asset(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource) -> MaterializeResult:
        slide_id = validate_slide_id(context.partition_key)
        xen = storage.stage_dir("xenium_slide", slide_id)

        def compute(out: Path) -> dict:
            s = annotation_stages.write_counts(stage, xen, out, load_config("annotation"))
            main = s[annotation_stages.COUNT_FILES[stage][0]]
            context.log.info(f"{slide_id}: {stage} {main['n_cells']} cells x {main['n_genes']} genes, "
                             f"{main['n_transcripts']} transcripts")
            return {"dagster/row_count": main["n_cells"], **{f"{k}_{m}": v for k, d in s.items() for m, v in d.items()}}

        return run_slide_stage(context, stage, storage, lineage, compute, inputs=("xenium_slide",))

    return _asset


nucleus_counts = _counts_asset("nucleus_counts", "Transcripts per nucleus (qv >= threshold, no controls) as AnnData.")
cell_counts = _counts_asset("cell_counts", "Transcripts per cell and per cytoplasm (cell - nucleus) as AnnData.")


def _reference_spec(catalog: SlideCatalogResource, storage: StorageResource, slide_id: str) -> references.ReferenceSpec:
    spec = catalog.get(slide_id)
    return references.reference_spec(spec.tissue, Path(storage.root) / "references", load_config("annotation").references,
                                     spec.reference)


@asset(
    **compute_class("tangram_labels"),
    partitions_def=slides_partitions,
    deps=[cell_counts, nucleus_counts, reference_atlas.key],
    automation_condition=REBUILD_ON_CHANGE,
    code_version=code_version_of(tangram_transfer, references, annotation_stages.write_tangram_labels,
                                 configs=("annotation", "categories")),
    group_name="annotation",
    kinds={"python", "torch"},
    description="Tangram label transfer from the tissue's reference atlas (cells and nuclei), with per-category "
                "probabilities.",
)
def tangram_labels(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource,
                   catalog: SlideCatalogResource) -> MaterializeResult:
    slide_id = validate_slide_id(context.partition_key)
    ref = _reference_spec(catalog, storage, slide_id)

    def compute(out: Path) -> dict:
        def progress(done: int, total: int) -> None:
            context.log.info(f"{slide_id}: tangram bag {done}/{total}")

        o = annotation_stages.write_tangram_labels(
            storage.stage_dir("cell_counts", slide_id), storage.stage_dir("nucleus_counts", slide_id), ref, out,
            load_config("annotation"), load_categories(), progress)
        labels = pd.read_parquet(out / "tangram_labels.parquet")
        comp = labels[labels["compartment"] == "cell"]["category"].value_counts().to_dict()
        return {"dagster/row_count": o.n_cells, "n_shared_genes": o.n_shared_genes,
                "n_training_genes": o.n_training_genes, "device": o.device,
                "reference": str(ref.path), "reference_sha256": o.reference_sha256, "compartments": o.compartments,
                "tangram_composition": {k: int(v) for k, v in comp.items()}}

    return run_slide_stage(context, "tangram_labels", storage, lineage, compute, inputs=("cell_counts", "nucleus_counts"))


@asset(
    **compute_class("clusters"),
    partitions_def=slides_partitions,
    deps=[cell_counts],
    code_version=code_version_of(clustering, annotation_stages.write_clusters, configs=("annotation",)),
    group_name="annotation",
    kinds={"python", "scanpy"},
    description="Leiden clusters, Wilcoxon marker genes and per-category marker scores on the slide's cells.",
)
def clusters(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource) -> MaterializeResult:
    slide_id = validate_slide_id(context.partition_key)

    def compute(out: Path) -> dict:
        s = annotation_stages.write_clusters(storage.stage_dir("cell_counts", slide_id), out, load_config("annotation"),
                                             load_categories().less10_max_transcripts)
        markers = pd.read_parquet(out / "markers.parquet")
        top = markers[markers["rank"] < 5].groupby("cluster", observed=True)["gene"].apply(", ".join)
        table = "| cluster | marker label | top Wilcoxon genes |\n|---|---|---|\n" + "\n".join(
            f"| {c} | {s['marker_labels'].get(c, '')} | {top.get(c, '')} |" for c in sorted(s["marker_labels"], key=int))
        return {"dagster/row_count": s["n_cells"], "n_clusters": s["n_clusters"], "marker_labels": s["marker_labels"],
                "clusters": MetadataValue.md(table)}

    return run_slide_stage(context, "clusters", storage, lineage, compute, inputs=("cell_counts",))


@asset(
    **compute_class("cell_types"),
    partitions_def=slides_partitions,
    deps=[tangram_labels, clusters, cell_counts],
    automation_condition=REBUILD_ON_CHANGE,
    code_version=code_version_of(annotation, crosscheck, annotation_stages.write_cell_types,
                                 configs=("annotation", "categories")),
    group_name="annotation",
    kinds={"python", "parquet"},
    description="Harmonized cell types (10 categories + Unknown + Less10, 9-class and 5-class groupings, confidence) "
                "from the explicit Tangram / marker rule, with an independent cross-check.",
)
def cell_types(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource,
               catalog: SlideCatalogResource) -> MaterializeResult:
    slide_id = validate_slide_id(context.partition_key)
    spec = catalog.get(slide_id)
    holder: dict = {}

    def compute(out: Path) -> dict:
        s = annotation_stages.write_cell_types(
            slide_id, storage.stage_dir("xenium_slide", slide_id), storage.stage_dir("cell_counts", slide_id),
            storage.stage_dir("tangram_labels", slide_id), storage.stage_dir("clusters", slide_id), out,
            load_config("annotation"), load_categories(), overrides_dir())
        holder["s"] = s
        labels = pd.read_parquet(out / "cell_labels.parquet")
        category_map_png(labels, out / "category_map.png")
        review = pd.read_parquet(out / "cluster_review.parquet")
        holder["review"] = review
        flagged = review[review["flagged"]]
        singler = "" if s.get("singler_agreement") is None else f", SingleR agreement {s['singler_agreement']:.3f}"
        context.log.info(f"{slide_id}: {s['n_cells']} cells, cross-check agreement {s['crosscheck_agreement']:.3f}"
                         f"{singler}, {s['n_flagged_clusters']}/{s['n_clusters']} clusters flagged")
        return {
            "dagster/row_count": s["n_cells"], "composition": s["composition"],
            "frac_unknown": round(s["frac_unknown"], 4), "frac_less10": round(s["frac_less10"], 4),
            "crosscheck_agreement": round(s["crosscheck_agreement"], 4),
            "crosscheck_by_category": s["crosscheck_by_category"], "decisions": s["decisions"],
            "singler_agreement": round(s["singler_agreement"], 4) if s.get("singler_agreement") is not None else "off",
            "singler_by_category": s.get("singler_by_category") or {},
            "n_clusters": s["n_clusters"], "n_flagged_clusters": s["n_flagged_clusters"],
            "override_file": s["override_file"] or "none", "reference_sha256": s["reference_sha256"],
            "category_map": md_image(out / "category_map.png", "cell types", 384),
            "flagged_clusters": MetadataValue.md(flagged[["cluster", "n_cells", "label", "flag_reasons"]].to_markdown(index=False)
                                                 if len(flagged) else "none"),
        }

    result = run_slide_stage(context, "cell_types", storage, lineage, compute,
                             inputs=("tangram_labels", "clusters", "cell_counts"))
    s, review = holder["s"], holder["review"]
    store = lineage.store()
    thresholds = load_config("annotation")["checks"]
    store.record("annotation_qc", {
        "run_id": context.run_id, "slide_id": slide_id, "n_cells": s["n_cells"], "frac_unknown": s["frac_unknown"],
        "frac_less10": s["frac_less10"], "crosscheck_agreement": s["crosscheck_agreement"],
        "n_flagged_clusters": s["n_flagged_clusters"], "passed": not annotation_failures(s, thresholds),
        "tissue": spec.tissue, "reference_sha256": s["reference_sha256"], "composition": json.dumps(s["composition"]),
        "crosscheck_by_category": json.dumps(s["crosscheck_by_category"]),
        "frac_flagged_clusters": s["frac_flagged_clusters"], "singler_agreement": s.get("singler_agreement"),
        "singler_by_category": json.dumps(s.get("singler_by_category") or {})})
    for r in review.itertuples():
        store.record("annotation_clusters", {
            "run_id": context.run_id, "slide_id": slide_id, "cluster": str(r.cluster), "n_cells": int(r.n_cells),
            "tangram_majority": r.tangram_majority, "marker_label": r.marker_label, "decision": r.decision,
            "label": r.label, "disagreeing_fraction": float(r.disagreeing_fraction), "flagged": bool(r.flagged),
            "flag_reasons": r.flag_reasons, "top_markers": r.top_markers if isinstance(r.top_markers, str) else "",
            "singler_majority": getattr(r, "singler_majority", None),
            "singler_agreement": _float_or_none(getattr(r, "singler_agreement", None))},
            flush=False)
    store.flush()
    return result


def _float_or_none(value: object) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def annotation_failures(summary: dict, t: dict) -> list[str]:
    """Why a slide's annotation summary breaks the thresholds in config/annotation.yaml (empty when it passes)."""
    out = []
    if summary["frac_unknown"] > t["max_frac_unknown"]:
        out.append(f"{summary['frac_unknown']:.1%} Unknown cells (max {t['max_frac_unknown']:.0%})")
    if summary["frac_less10"] > t["max_frac_less10"]:
        out.append(f"{summary['frac_less10']:.1%} Less10 cells (max {t['max_frac_less10']:.0%})")
    if not summary["crosscheck_agreement"] >= t["min_crosscheck_agreement"]:
        out.append(f"cross-check agreement {summary['crosscheck_agreement']:.1%} (min {t['min_crosscheck_agreement']:.0%})")
    if summary["frac_flagged_clusters"] > t["max_frac_flagged_clusters"]:
        out.append(f"{summary['frac_flagged_clusters']:.0%} of clusters flagged (max {t['max_frac_flagged_clusters']:.0%})")
    return out


@asset_check(
    asset=cell_types,
    partitions_def=slides_partitions,
    blocking=True,
    description="Unknown / Less10 fractions, cross-check agreement and flagged clusters within config/annotation.yaml "
                "thresholds; cell_labels validated with Great Expectations (ids unique, every cell labelled).",
)
def annotation_quality(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    folder = storage.stage_dir("cell_types", validate_slide_id(context.partition_key))
    summary = json.loads((folder / "summary.json").read_text())
    labels = pd.read_parquet(folder / "cell_labels.parquet")
    cats = load_categories()
    gx = validation.validate_frame(labels, validation.cell_labels_expectations(
        list(cats.categories) + list(cats.special_labels)))
    failures = annotation_failures(summary, load_config("annotation")["checks"]) + gx.failures
    return AssetCheckResult(
        passed=not failures, severity=AssetCheckSeverity.ERROR,
        description="within thresholds" if not failures else "; ".join(failures),
        metadata={"frac_unknown": summary["frac_unknown"], "frac_less10": summary["frac_less10"],
                  "crosscheck_agreement": summary["crosscheck_agreement"],
                  "frac_flagged_clusters": summary["frac_flagged_clusters"],
                  "gx_expectations": gx.n_expectations, "gx_failures": MetadataValue.json(gx.failures)})


@asset_check(
    asset=cell_counts,
    partitions_def=slides_partitions,
    blocking=True,
    description="Count tables validated with Great Expectations: unique cell ids, non-negative counts; cytoplasm = "
                "cell - nucleus is never negative.",
)
def counts_valid(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    slide_id = validate_slide_id(context.partition_key)
    cell = ad.read_h5ad(storage.stage_dir("cell_counts", slide_id) / "cell.h5ad")
    cyto = ad.read_h5ad(storage.stage_dir("cell_counts", slide_id) / "cytoplasm.h5ad")
    mins = [np.asarray(m.X.min(axis=1).toarray()).ravel() if hasattr(m.X, "toarray") else np.asarray(m.X).min(1)
            for m in (cell, cyto)]
    frame = pd.DataFrame({"cell_id": cell.obs_names.to_numpy(), "n_transcripts": cell.obs["n_transcripts"].to_numpy(),
                          "min_count": np.minimum(*mins)})
    gx = validation.validate_frame(frame, validation.counts_expectations())
    return AssetCheckResult(passed=gx.success, severity=AssetCheckSeverity.ERROR,
                            description="valid" if gx.success else "; ".join(gx.failures),
                            metadata={"n_cells": len(frame), "gx_expectations": gx.n_expectations,
                                      "gx_failures": MetadataValue.json(gx.failures)})
