"""Counting and annotation assets: counts per nucleus / cell / cytoplasm, Tangram, clusters, harmonized cell
types, and their checks (Great Expectations inside the asset's own step, on what it just wrote).
"""


import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets._runtime import StageOutput, code_version_of, compute_class, md_image, run_slide_stage
from assets.annotation.reference_atlas import REBUILD_ON_CHANGE, reference_atlas
from assets.ingest import xenium_slide
from assets.partitions import slides_partitions
from resources import LineageResource, SlideCatalogResource, StorageResource
from sthelar_platform.core.config import config_path, load_categories, load_config, overrides_dir
from sthelar_platform.core.ids import validate_slide_id
from sthelar_platform.core.warehouse import CellCountsFolder, CellTypesFolder, ClustersFolder, NucleusCountsFolder

if TYPE_CHECKING:
    from sthelar_platform.annotation.cell_types import CellTypesResult, CellTypesSummary
    from sthelar_platform.annotation.references import ReferenceSpec
    from sthelar_platform.core.categories import CategorySystem

VALIDATION = "sthelar_platform.core.validation"   # Great Expectations suites of the checks run in the step

COUNTS_VALID = AssetCheckSpec(
    "counts_valid", asset="cell_counts", blocking=True, partitions_def=slides_partitions,
    description="Count tables validated with Great Expectations: unique cell ids, non-negative counts; cytoplasm = "
                "cell - nucleus is never negative.")


def _counts_asset(stage: str, description: str, check_specs: list[AssetCheckSpec]) -> AssetsDefinition:
    @asset(
        **compute_class(stage),
        name=stage,
        partitions_def=slides_partitions,
        deps=[xenium_slide],
        check_specs=check_specs,
        code_version=code_version_of("sthelar_platform.annotation.counts", VALIDATION, configs=("annotation",)),
        group_name="annotation",
        kinds={"python", "anndata"},
        description=description,
    )
    def _asset(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource) -> MaterializeResult:
        from sthelar_platform.annotation import counts

        slide_id = validate_slide_id(context.partition_key)
        xen = storage.stage_dir("xenium_slide", slide_id)

        def compute(out: Path) -> StageOutput[None]:
            s = counts.write_counts(stage, xen, out, load_config("annotation").counts.qv_min)
            main = next(iter(s.values()))
            context.log.info(f"{slide_id}: {stage} {main.n_cells} cells x {main.n_genes} genes, "
                             f"{main.n_transcripts} transcripts")
            return StageOutput({"dagster/row_count": main.n_cells,
                                **{f"{k}_{m}": v for k, d in s.items() for m, v in d.__dict__.items()}}, None)

        run = run_slide_stage(context, stage, storage, lineage, compute, inputs=("xenium_slide",))
        return run.result([counts_valid(CellCountsFolder(run.output))] if check_specs else [])

    return _asset


nucleus_counts = _counts_asset("nucleus_counts", "Transcripts per nucleus (qv >= threshold, no controls) as AnnData.",
                               [])
cell_counts = _counts_asset("cell_counts", "Transcripts per cell and per cytoplasm (cell - nucleus) as AnnData.",
                            [COUNTS_VALID])


def counts_valid(folder: CellCountsFolder) -> AssetCheckResult:
    import anndata as ad
    import numpy as np
    import pandas as pd

    from sthelar_platform.core import validation

    cell = ad.read_h5ad(folder.cell)
    cyto = ad.read_h5ad(folder.cytoplasm)
    mins = [np.asarray(m.X.min(axis=1).toarray()).ravel() if hasattr(m.X, "toarray") else np.asarray(m.X).min(1)
            for m in (cell, cyto)]
    frame = pd.DataFrame({"cell_id": cell.obs_names.to_numpy(), "n_transcripts": cell.obs["n_transcripts"].to_numpy(),
                          "min_count": np.minimum(*mins)})
    gx = validation.validate_frame(frame, validation.counts_expectations())
    return AssetCheckResult(check_name="counts_valid", passed=gx.success, severity=AssetCheckSeverity.ERROR,
                            description="valid" if gx.success else "; ".join(gx.failures),
                            metadata={"n_cells": len(frame), "gx_expectations": gx.n_expectations,
                                      "gx_failures": MetadataValue.json(gx.failures)})


def _reference_spec(catalog: SlideCatalogResource, storage: StorageResource, slide_id: str) -> "ReferenceSpec":
    from sthelar_platform.annotation import references

    spec = catalog.get(slide_id)
    return references.reference_spec(spec.tissue, Path(storage.root) / "references", load_config("annotation").references,
                                     spec.reference, config_path("annotation"))


@asset(
    **compute_class("tangram_labels"),
    partitions_def=slides_partitions,
    deps=[cell_counts, nucleus_counts, reference_atlas.key],
    automation_condition=REBUILD_ON_CHANGE,
    code_version=code_version_of("sthelar_platform.annotation.tangram", configs=("annotation", "categories")),
    group_name="annotation",
    kinds={"python", "torch"},
    description="Tangram label transfer from the tissue's reference atlas (cells and nuclei), with per-category "
                "probabilities.",
)
def tangram_labels(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource,
                   catalog: SlideCatalogResource) -> MaterializeResult:
    import pandas as pd

    from sthelar_platform.annotation import tangram as tangram_lib

    slide_id = validate_slide_id(context.partition_key)
    ref = _reference_spec(catalog, storage, slide_id)

    def compute(out: Path) -> StageOutput[None]:
        def progress(done: int, total: int) -> None:
            context.log.info(f"{slide_id}: tangram bag {done}/{total}")

        o = tangram_lib.write_tangram_labels(
            storage.stage_dir(CellCountsFolder.stage, slide_id), storage.stage_dir(NucleusCountsFolder.stage, slide_id),
            ref, out, load_config("annotation"), load_categories(), progress)
        labels = pd.read_parquet(tangram_lib.TangramLabelsFolder(out).labels)
        comp = labels[labels["compartment"] == "cell"]["category"].value_counts().to_dict()
        return StageOutput({
            "dagster/row_count": o.n_cells, "n_shared_genes": o.n_shared_genes, "n_training_genes": o.n_training_genes,
            "device": o.device, "reference": str(ref.path), "reference_sha256": o.reference_sha256,
            "compartments": o.compartments, "tangram_composition": {k: int(v) for k, v in comp.items()}}, None)

    return run_slide_stage(context, "tangram_labels", storage, lineage, compute,
                           inputs=("cell_counts", "nucleus_counts")).result()


@asset(
    **compute_class("clusters"),
    partitions_def=slides_partitions,
    deps=[cell_counts],
    code_version=code_version_of("sthelar_platform.annotation.clustering", configs=("annotation", "categories")),
    group_name="annotation",
    kinds={"python", "scanpy"},
    description="Leiden clusters, Wilcoxon marker genes and per-category marker scores on the slide's cells.",
)
def clusters(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource) -> MaterializeResult:
    import pandas as pd

    from sthelar_platform.annotation import clustering

    slide_id = validate_slide_id(context.partition_key)

    def compute(out: Path) -> StageOutput[None]:
        s = clustering.write_clusters(storage.stage_dir(CellCountsFolder.stage, slide_id), out, load_config("annotation"),
                                      load_categories().less10_max_transcripts)
        markers = pd.read_parquet(ClustersFolder(out).markers)
        top = markers[markers["rank"] < 5].groupby("cluster", observed=True)["gene"].apply(", ".join)
        table = "| cluster | marker label | top Wilcoxon genes |\n|---|---|---|\n" + "\n".join(
            f"| {c} | {s.marker_labels.get(c, '')} | {top.get(c, '')} |" for c in sorted(s.marker_labels, key=int))
        return StageOutput({"dagster/row_count": s.n_cells, "n_clusters": s.n_clusters, "marker_labels": s.marker_labels,
                            "clusters": MetadataValue.md(table)}, None)

    return run_slide_stage(context, "clusters", storage, lineage, compute, inputs=("cell_counts",)).result()


@asset(
    **compute_class("cell_types"),
    partitions_def=slides_partitions,
    deps=[tangram_labels, clusters, cell_counts],
    check_specs=[AssetCheckSpec(
        "annotation_quality", asset="cell_types", blocking=True, partitions_def=slides_partitions,
        description="Unknown / Less10 fractions, cross-check agreement and flagged clusters within annotation.yaml "
                    "thresholds; cell_labels validated with Great Expectations (ids unique, every cell labelled).")],
    automation_condition=REBUILD_ON_CHANGE,
    code_version=code_version_of("sthelar_platform.annotation.cell_types", VALIDATION, "sthelar_platform.core.plots",
                                 configs=("annotation", "categories")),
    group_name="annotation",
    kinds={"python", "parquet"},
    description="Harmonized cell types (10 categories + Unknown + Less10, 9-class and 5-class groupings, confidence) "
                "from the explicit Tangram / marker rule, with an independent cross-check.",
)
def cell_types(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource,
               catalog: SlideCatalogResource) -> MaterializeResult:
    import pandas as pd

    from sthelar_platform.annotation import cell_types as cell_types_lib
    from sthelar_platform.core.plots import category_map_png

    slide_id = validate_slide_id(context.partition_key)
    spec = catalog.get(slide_id)
    cfg, cats = load_config("annotation"), load_categories()

    def compute(out: Path) -> "StageOutput[CellTypesResult]":
        res = cell_types_lib.write_cell_types(
            slide_id, storage.stage_dir("xenium_slide", slide_id), storage.stage_dir("cell_counts", slide_id),
            storage.stage_dir("tangram_labels", slide_id), storage.stage_dir("clusters", slide_id), out,
            cfg, cats, overrides_dir())
        s, review = res.summary, res.review
        folder = CellTypesFolder(out)
        category_map_png(pd.read_parquet(folder.cell_labels), folder.category_map)
        flagged = review[review["flagged"]]
        singler = "" if s.singler_agreement is None else f", SingleR agreement {s.singler_agreement:.3f}"
        context.log.info(f"{slide_id}: {s.n_cells} cells, cross-check agreement {s.crosscheck_agreement:.3f}"
                         f"{singler}, {s.n_flagged_clusters}/{s.n_clusters} clusters flagged")
        return StageOutput({
            "dagster/row_count": s.n_cells, "composition": s.composition,
            "frac_unknown": round(s.frac_unknown, 4), "frac_less10": round(s.frac_less10, 4),
            "crosscheck_agreement": round(s.crosscheck_agreement, 4),
            "crosscheck_by_category": s.crosscheck_by_category, "decisions": s.decisions,
            "singler_agreement": round(s.singler_agreement, 4) if s.singler_agreement is not None else "off",
            "singler_by_category": s.singler_by_category,
            "n_clusters": s.n_clusters, "n_flagged_clusters": s.n_flagged_clusters,
            "override_file": s.override_file or "none", "reference_sha256": s.reference_sha256,
            "category_map": md_image(folder.category_map, "cell types", 384),
            "flagged_clusters": MetadataValue.md(flagged[["cluster", "n_cells", "label", "flag_reasons"]].to_markdown(index=False)
                                                 if len(flagged) else "none"),
        }, res)

    run = run_slide_stage(context, "cell_types", storage, lineage, compute,
                          inputs=("tangram_labels", "clusters", "cell_counts"))
    s, review = run.value.summary, run.value.review
    failures = cell_types_lib.annotation_failures(s, cfg.checks)
    store = lineage.store()
    store.record("annotation_qc", {
        "run_id": context.run_id, "slide_id": slide_id, "n_cells": s.n_cells, "frac_unknown": s.frac_unknown,
        "frac_less10": s.frac_less10, "crosscheck_agreement": s.crosscheck_agreement,
        "n_flagged_clusters": s.n_flagged_clusters, "passed": not failures,
        "tissue": spec.tissue, "reference_sha256": s.reference_sha256, "composition": json.dumps(s.composition),
        "crosscheck_by_category": json.dumps(s.crosscheck_by_category),
        "frac_flagged_clusters": s.frac_flagged_clusters, "singler_agreement": s.singler_agreement,
        "singler_by_category": json.dumps(s.singler_by_category)})
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
    return run.result([annotation_quality(CellTypesFolder(run.output), s, failures, cats)])


def _float_or_none(value: Any) -> float | None:
    import pandas as pd

    return None if value is None or pd.isna(value) else float(value)


def annotation_quality(folder: CellTypesFolder, summary: "CellTypesSummary", failures: list[str],
                       cats: "CategorySystem") -> AssetCheckResult:
    import pandas as pd

    from sthelar_platform.core import validation

    labels = pd.read_parquet(folder.cell_labels)
    gx = validation.validate_frame(labels, validation.cell_labels_expectations(
        list(cats.categories) + list(cats.special_labels)))
    failures = failures + gx.failures
    return AssetCheckResult(
        check_name="annotation_quality", passed=not failures, severity=AssetCheckSeverity.ERROR,
        description="within thresholds" if not failures else "; ".join(failures),
        metadata={"frac_unknown": summary.frac_unknown, "frac_less10": summary.frac_less10,
                  "crosscheck_agreement": summary.crosscheck_agreement,
                  "frac_flagged_clusters": summary.frac_flagged_clusters,
                  "gx_expectations": gx.n_expectations, "gx_failures": MetadataValue.json(gx.failures)})
