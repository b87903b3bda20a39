"""The browsable QC site, rendered from the dbt marts after every QC refresh."""

from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets._runtime import StageOutput, code_version_of, compute_class, run_slide_stage
from resources import LineageResource, StorageResource
from sthelar_platform.core.config import load_config
from sthelar_platform.qc.dbt_project import qc_database, run_results_path

MARTS = ("slide_summary", "patch_quality", "annotation_review", "model_leaderboard", "output_lineage")


def dashboard_thresholds() -> dict[str, float]:
    """The QC thresholds the dashboard colours by, from sthelar_platform/config/tiling.yaml."""
    a = load_config("tiling").agreement
    return {"max_frac_flagged": float(a.max_frac_flagged), "flag_below_jaccard": float(a.flag_below_jaccard),
            "flag_focus_ratio_below": float(a.flag_focus_ratio_below), "flag_ink_above": float(a.flag_ink_above)}


@asset(
    **compute_class("qc_dashboard"),
    deps=[AssetKey(m) for m in MARTS],
    check_specs=[AssetCheckSpec(
        "lineage_quarantine", asset="qc_dashboard",
        description="Lineage spool files that could not be merged (another version's table, a truncated file, a value "
                    "DuckDB refuses) are kept in lineage_spool/quarantine/ with a reason; warns while any are there.")],
    code_version=code_version_of("sthelar_platform.qc.dashboard", configs=("tiling",)),
    group_name="qc",
    kinds={"html", "plotly"},
    description="dashboards/: a static QC site (cohort overview + one page per slide: registration residual and "
                "overlay, cell-type composition and map, patch-quality map and distributions, annotation review, "
                "model metrics, dbt test results, warnings). Serve it with `sthelar dashboard`.",
)
def qc_dashboard(context: AssetExecutionContext, storage: StorageResource, lineage: LineageResource) -> MaterializeResult:
    from sthelar_platform.qc import dashboard as dashboard_lib

    layout = storage.layout
    final = layout.dashboards

    def compute(out: Path) -> StageOutput[None]:
        site = out / "site"
        s = dashboard_lib.build_dashboard(qc_database(layout), layout, site, run_results_path(layout),
                                          dashboard_thresholds())
        context.log.info(f"QC dashboard: {s['n_slides']} slide pages, {s['n_warnings']} warnings, dbt tests "
                         f"{s['dbt_failed']} failing of {s['dbt_tests']}, built in {s['build_s']}s")
        index = final / "site" / "index.html"
        return StageOutput({**s, "dagster/row_count": s["n_slides"], "index": MetadataValue.path(str(index)),
                            "open": MetadataValue.url(index.as_uri()),
                            "serve": MetadataValue.md("`sthelar dashboard` serves it on http://127.0.0.1:8765/ "
                                                      "(localhost only)")}, None)

    run = run_slide_stage(context, "qc_dashboard", storage, lineage, compute, final=final)
    return run.result([lineage_quarantine(lineage)])


def lineage_quarantine(lineage: LineageResource) -> AssetCheckResult:
    quarantined = lineage.store().quarantined()
    return AssetCheckResult(
        check_name="lineage_quarantine", passed=not quarantined, severity=AssetCheckSeverity.WARN,
        description="no quarantined lineage files" if not quarantined else
        f"{len(quarantined)} lineage spool file(s) quarantined in {lineage.store().quarantine}",
        metadata={"n_quarantined": len(quarantined),
                  "files": MetadataValue.md("\n".join(f"- `{q['file']}`: {q['reason']}" for q in quarantined) or "none")})
