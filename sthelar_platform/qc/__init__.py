"""QC: the dbt project's plumbing (manifest, lineage snapshot, qc.duckdb) and the static QC dashboard."""

from sthelar_platform.core._lazy import lazy_exports

_EXPORTS = {
    "DBT_PROJECT_DIR": "dbt_project",
    "ensure_manifest": "dbt_project",
    "qc_database": "dbt_project",
    "run_results_path": "dbt_project",
    "build_dashboard": "dashboard",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
