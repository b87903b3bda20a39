"""The dbt_qc project as Dagster assets: each model downstream of the Python assets that feed it,
each dbt test an asset check. A failing dbt test is reported (check failed, dashboard shows it);
only a model that fails to build fails the step.
"""

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dagster import AssetExecutionContext
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, dbt_assets

from assets._runtime import compute_class
from resources import LineageResource, StorageResource
from resources.dbt import qc_dbt_project
from sthelar_platform.qc import dbt_project as qc_lib


class QcTranslator(DagsterDbtTranslator):
    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return "qc"


@dbt_assets(
    **compute_class("qc_models"),
    manifest=qc_dbt_project.manifest_path,
    dagster_dbt_translator=QcTranslator(settings=DagsterDbtTranslatorSettings(enable_asset_checks=True)),
    name="qc_models",
)
def qc_models(context: AssetExecutionContext, dbt: DbtCliResource, storage: StorageResource,
              lineage: LineageResource) -> Iterator:
    layout = storage.layout
    build = qc_lib.start_build(layout, lineage.store())
    os.environ.update(build.env)  # dbt's profile reads both paths from the environment
    invocation = dbt.cli(["build"], context=context, raise_on_error=False)
    results: Path | None = None
    models_ok = False
    try:
        yield from invocation.stream()
        results = invocation.target_path / "run_results.json"
        if not results.exists():
            raise RuntimeError(f"dbt build wrote no {results.name} (it stopped before running any model; its log is in "
                               f"this step's output). Fix the dbt profile or project in {qc_dbt_project.project_dir}; "
                               f"the last good QC database {build.final} is kept")
        summary = qc_lib.summarize_run_results(results)
        broken = [p for p in summary["problems"] if p["kind"] == "model" and p["status"] == "error"]
        models_ok = not broken and build.database.exists()
        failing = [p["name"] for p in summary["problems"] if p["kind"] == "test"]
        if failing:
            context.log.warning(f"dbt tests failing (shown on the QC dashboard): {', '.join(failing)}")
        if not models_ok:
            raise RuntimeError("dbt models failed to build: " + "; ".join(
                f"{p['name']}: {p['message']}" for p in broken) + f" (see {results}); the last good QC database "
                f"{build.final} is kept")
        context.log.info(f"QC database {build.final}: {summary['n_models']} models, {summary['n_tests']} tests "
                         f"({json.dumps(summary['counts'])})")
    finally:
        qc_lib.finish_build(build, results, models_ok)
        shutil.rmtree(invocation.target_path, ignore_errors=True)
