"""The platform's Dagster definitions, assembled in one place (loaded by workspace.yaml)."""

from __future__ import annotations

import os

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    Definitions,
    EnvVar,
    ScheduleDefinition,
    define_asset_job,
)

from assets import annotation, ingest, model, qc, registration, tiling
from assets.automation import automation_sensor, observe_references_job, reference_watch, slide_landing_sensor
from assets.executors import build_executor
from assets.partitions import slides_partitions
from resources import ComputeDeviceResource, LineageResource, SlideCatalogResource, StorageResource
from resources.dbt import dbt_resource
from sthelar_platform.core.paths import StorageLayout

os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "False")


def build_resources(home: str | None = None) -> dict:
    """The resources, rooted at ``home`` (default $STHELAR_HOME)."""
    layout = StorageLayout.at(home or os.environ.get("STHELAR_HOME", "./sthelar_home"))
    return {
        "storage": StorageResource(root=str(layout.root)),
        # STHELAR_LINEAGE_URL=postgresql://... puts lineage in Postgres (many hosts); read at run time, never logged
        "lineage": LineageResource(db_path=str(layout.lineage_db),
                                   url=EnvVar("STHELAR_LINEAGE_URL") if os.environ.get("STHELAR_LINEAGE_URL") else ""),
        "catalog": SlideCatalogResource(path=str(layout.catalog)),
        # torch's device for training, evaluation and predictions: auto (CUDA when present) | cpu | cuda[:N]
        "compute": ComputeDeviceResource(device=os.environ.get("STHELAR_DEVICE", "auto")),
        "dbt": dbt_resource(),
    }


# Each domain lists its own assets and checks (assets/<stage>); they are assembled here.
ALL_ASSETS = [*ingest.ASSETS, *registration.ASSETS, *annotation.ASSETS, *tiling.ASSETS]
SLIDE_SOURCES = annotation.SOURCES
COHORT_ASSETS = model.COHORT_ASSETS
PREDICTION_ASSETS = model.PREDICTION_ASSETS
QC_ASSETS = qc.ASSETS

slide_pipeline = define_asset_job(
    "slide_pipeline",
    selection=AssetSelection.assets(*ALL_ASSETS),
    executor_def=build_executor(ALL_ASSETS),  # its forkserver imports these assets' library code once
    partitions_def=slides_partitions,
    description="Everything per slide, for one slide partition.",
)

training_job = define_asset_job(
    "training_job",
    selection=AssetSelection.assets(*COHORT_ASSETS),
    executor_def=build_executor(COHORT_ASSETS),  # its forkserver imports these assets' library code once
    description="Across slides: the training dataset, the CellViT models (detailed, grouped) and their evaluation.",
)

predictions_job = define_asset_job(
    "predictions_job",
    selection=AssetSelection.assets(*PREDICTION_ASSETS),
    executor_def=build_executor(PREDICTION_ASSETS),  # its forkserver imports these assets' library code once
    partitions_def=slides_partitions,
    description="Per slide, after training: whole-slide CellViT predictions linked to the Xenium cells.",
)

qc_job = define_asset_job(
    "qc_job",
    selection=AssetSelection.assets(*QC_ASSETS),
    executor_def=build_executor(QC_ASSETS),  # its forkserver imports these assets' library code once
    description="Refresh the dbt QC models (with their tests) and the QC dashboard.",
)

# Nightly by default; STHELAR_QC_CRON changes it without a code edit.
qc_nightly = ScheduleDefinition(
    name="qc_nightly", job=qc_job, cron_schedule=os.environ.get("STHELAR_QC_CRON", "0 2 * * *"),
    execution_timezone="UTC", default_status=DefaultScheduleStatus.RUNNING,
    description="Rebuild the dbt QC models and the dashboards every night.",
)

defs = Definitions(
    assets=[*SLIDE_SOURCES, *ALL_ASSETS, *COHORT_ASSETS, *PREDICTION_ASSETS, *QC_ASSETS],
    jobs=[slide_pipeline, training_job, predictions_job, qc_job, observe_references_job],
    schedules=[qc_nightly, reference_watch],
    sensors=[slide_landing_sensor, automation_sensor],
    resources=build_resources(),
    executor=build_executor([*ALL_ASSETS, *COHORT_ASSETS, *PREDICTION_ASSETS, *QC_ASSETS]),  # the UI's own selections
)


def slide_pipeline_job():
    """Top-level factory so runs can be reconstructed in child processes (multiprocess executor)."""
    return defs.resolve_job_def("slide_pipeline")


def training_job_def():
    """Top-level factory for the cross-slide job (reconstructable in child processes)."""
    return defs.resolve_job_def("training_job")


def predictions_job_def():
    """Top-level factory for the per-slide predictions job (reconstructable in child processes)."""
    return defs.resolve_job_def("predictions_job")


def qc_job_def():
    """Top-level factory for the QC refresh job (reconstructable in child processes)."""
    return defs.resolve_job_def("qc_job")
