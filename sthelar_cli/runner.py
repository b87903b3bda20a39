"""Run the platform's Dagster job from Python (the CLI's `materialize` and `demo`).

Kept out of the domain modules: this is the one library module that talks to Dagster,
imported lazily by the CLI only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sthelar_platform.core.ids import validate_slide_id
from sthelar_platform.core.paths import StorageLayout


@dataclass(frozen=True)
class RunOutcome:
    slide_id: str
    run_id: str
    success: bool
    failed_steps: list[str]


def use_home(home: str | Path) -> StorageLayout:
    """Point the process (and the Dagster instance) at a storage root."""
    layout = StorageLayout.at(home)
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.dagster_home.mkdir(parents=True, exist_ok=True)
    os.environ["STHELAR_HOME"] = str(layout.root)
    os.environ["DAGSTER_HOME"] = str(layout.dagster_home)
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "False")
    cfg = layout.dagster_home / "dagster.yaml"
    if not cfg.exists():
        cfg.write_text("telemetry:\n  enabled: false\n")
    return layout


def init_instance_storage() -> None:
    """Create the Dagster instance's SQLite schemas once, in this process.

    `dagster dev` starts the webserver, the daemon and their code servers at once; on a fresh
    DAGSTER_HOME each of them creates and stamps the schedule schema, and two concurrent stamps leave
    `alembic_version` with two heads, after which the code location never loads and no sensor ticks.
    """
    from dagster import DagsterInstance

    with DagsterInstance.get() as instance:
        instance.get_runs(limit=1)
        list(instance.all_instigator_state())


def register_partitions(slide_ids: list[str]) -> None:
    """Add the slides missing from the `slides` dynamic partitions."""
    from dagster import DagsterInstance

    with DagsterInstance.get() as instance:
        existing = set(instance.get_dynamic_partitions("slides"))
        new = [s for s in slide_ids if s not in existing]
        if new:
            instance.add_dynamic_partitions("slides", new)


def materialize_slide(slide_id: str, selection: list[str] | None = None, job_name: str = "slide_pipeline") -> RunOutcome:
    """Run a per-slide job (``slide_pipeline`` or ``predictions_job``) for one slide partition."""
    from dagster import AssetKey, DagsterInstance, execute_job, reconstructable

    import sthelar_definitions

    validate_slide_id(slide_id)
    with DagsterInstance.get() as instance:
        factory = {"slide_pipeline": sthelar_definitions.slide_pipeline_job,
                   "predictions_job": sthelar_definitions.predictions_job_def}[job_name]
        job = reconstructable(factory)
        keys = [AssetKey(s) for s in selection] if selection else None
        run_config = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
        result = execute_job(job, instance=instance, tags={"dagster/partition": slide_id}, asset_selection=keys,
                             run_config=run_config)
        failed = [e.step_key or "" for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        return RunOutcome(slide_id=slide_id, run_id=result.run_id, success=result.success, failed_steps=failed)


def materialize_cohort(job_name: str = "training_job") -> RunOutcome:
    """Run a cross-slide job once: ``training_job`` (dataset, models, evaluation) or ``qc_job`` (dbt, dashboard)."""
    from dagster import DagsterInstance, execute_job, reconstructable

    import sthelar_definitions

    factory = {"training_job": sthelar_definitions.training_job_def, "qc_job": sthelar_definitions.qc_job_def}[job_name]
    with DagsterInstance.get() as instance:
        result = execute_job(reconstructable(factory), instance=instance,
                             run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}})
        failed = [e.step_key or "" for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        return RunOutcome(slide_id="(cohort)", run_id=result.run_id, success=result.success, failed_steps=failed)
