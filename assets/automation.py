"""The platform keeps itself up to date: new slides from the landing area, rebuilds when a
reference atlas changes (for that atlas's slides only), and the nightly QC refresh.

* ``slide_landing_sensor`` registers a landing folder as a slide partition and requests its
  slide pipeline run, once the upload is complete and stable (sthelar_platform/landing.py).
* ``reference_watch`` observes ``reference_atlas`` (assets/reference_atlas.py) on a schedule and
  ``rebuild_on_reference_change`` evaluates ``REBUILD_ON_CHANGE``: a changed atlas rebuilds the
  annotation and everything after it for the slides of that atlas only.
"""

from pathlib import Path

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    sensor,
)

from assets.annotation.reference_atlas import reference_atlas
from assets.partitions import slides_partitions
from resources import SlideCatalogResource, StorageResource
from sthelar_platform.core.config import load_config
from sthelar_platform.core.errors import InputError
from sthelar_platform.ingest import landing
from sthelar_platform.ingest.manifest import SlideCatalog

AUTOMATION = load_config("pipeline").automation

observe_references_job = define_asset_job("observe_references", selection=AssetSelection.assets(reference_atlas.key),
                                          description="Hash every slide's reference atlas (an observation).")

reference_watch = ScheduleDefinition(
    name="reference_watch", job=observe_references_job, cron_schedule=AUTOMATION.reference_observe_cron,
    default_status=DefaultScheduleStatus.RUNNING, execution_timezone="UTC",
    description="Observe the reference atlases; a changed file rebuilds its slides through REBUILD_ON_CHANGE.",
)

automation_sensor = AutomationConditionSensorDefinition(
    "rebuild_on_reference_change", target=AssetSelection.all(), default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates the assets' automation conditions (REBUILD_ON_CHANGE) and requests the partitions to rebuild.",
)


@sensor(
    job_name="slide_pipeline",
    minimum_interval_seconds=int(AUTOMATION.landing_interval_s),
    default_status=DefaultSensorStatus.RUNNING,
    description="Registers each complete, settled slide folder of the landing area as a partition and runs its "
                "slide pipeline; half-copied folders wait.",
)
def slide_landing_sensor(context: SensorEvaluationContext, storage: StorageResource,
                         catalog: SlideCatalogResource) -> SensorResult | SkipReason:
    cfg = load_config("pipeline").automation
    incoming = Path(storage.root) / cfg.landing_dir
    cursor = landing.LandingCursor.parse(context.cursor)
    ready, waiting, nxt = landing.scan(incoming, cursor, float(cfg.landing_settle_s))
    for f in waiting:
        why = f.error or (f"missing {', '.join(f.missing)}" if f.missing else "still changing or not yet settled")
        context.log.info(f"landing/{f.slide_id}: waiting ({why})")
    if not ready:
        return SensorResult(skip_reason=SkipReason(f"no complete upload in {incoming} ({len(waiting)} waiting)"),
                            cursor=nxt.dump())
    slides = SlideCatalog(catalog.path)
    registered, requests = [], []
    for f in ready:
        if f.spec is None:  # not complete: scan() never calls such a folder ready
            continue
        try:
            slides.add([f.spec], replace=bool(cfg.landing_replace_existing))
        except InputError as exc:
            context.log.error(f"landing/{f.slide_id}: not registered: {exc} (or set automation.landing_replace_existing "
                              "in pipeline.yaml to let landing folders re-point registered slides)")
            nxt.done.pop(f.slide_id, None)
            continue
        registered.append(f.slide_id)
        requests.append(RunRequest(partition_key=f.slide_id, run_key=f"{f.slide_id}:{f.signature}",
                                   tags={"sthelar/source": "landing", "sthelar/upload": f.signature}))
        context.log.info(f"landing/{f.slide_id}: complete; registered and requested its slide pipeline")
    return SensorResult(run_requests=requests, cursor=nxt.dump(),
                        dynamic_partitions_requests=[slides_partitions.build_add_request(registered)] if registered else [])
