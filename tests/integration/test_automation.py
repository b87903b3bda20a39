"""Reference atlases drive rebuilds of exactly their slides; observing an unchanged file rebuilds nothing.

Uses Dagster's own automation evaluation (the code the automation sensor runs in the daemon)
against a real instance holding materializations of every asset for three slides.
"""

import pytest
from dagster import AssetKey, AssetMaterialization, DagsterInstance, evaluate_automation_conditions
from dagster._core.definitions.observe import observe

import sthelar_definitions
from assets.annotation.reference_atlas import reference_atlas
from sthelar_platform.ingest.manifest import SlideCatalog, SlideSpec

SLIDES = {"breast_a": "breast", "breast_b": "breast", "skin_a": "skin"}
REBUILT = {"tangram_labels", "cell_types", "patches_40x", "patches_20x", "reference_segmentation",
           "segmentation_agreement", "slide_export", "slide_predictions"}


@pytest.fixture()
def world(tmp_path):
    home = tmp_path / "home"
    refs = home / "references"
    refs.mkdir(parents=True)
    for tissue in ("breast", "skin"):
        (refs / f"{tissue}.h5ad").write_bytes(f"{tissue} atlas v1".encode())
    xen, he = tmp_path / "xenium", tmp_path / "he.ome.tif"
    SlideCatalog(home / "catalog.yaml").add([
        SlideSpec(slide_id=s, tissue=t, xenium_dir=xen, he_image=he, reference=refs / f"{t}.h5ad")
        for s, t in SLIDES.items()])
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("slides", list(SLIDES))
    resources = sthelar_definitions.build_resources(str(home))
    observe([reference_atlas], instance=instance, resources=resources)
    graph = sthelar_definitions.defs.resolve_asset_graph()
    for key in graph.materializable_asset_keys:
        node = graph.get(key)
        for partition in (SLIDES if node.partitions_def is not None else [None]):
            instance.report_runless_asset_event(AssetMaterialization(asset_key=key, partition=partition))
    return home, instance, resources


def _requested(result) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for key in sthelar_definitions.defs.resolve_asset_graph().get_all_asset_keys():
        if result.get_num_requested(key):
            out[key.to_user_string()] = set(result.get_requested_partitions(key))
    return out


def test_changing_one_tissues_atlas_rebuilds_only_that_tissues_slides(world):
    home, instance, resources = world
    defs = sthelar_definitions.defs
    first = evaluate_automation_conditions(defs=defs, instance=instance)
    assert _requested(first) == {}  # everything is up to date
    (home / "references" / "breast.h5ad").write_bytes(b"breast atlas v2")
    observe([reference_atlas], instance=instance, resources=resources)
    changed = evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    requested = _requested(changed)
    assert set(requested) == REBUILT
    assert all(parts == {"breast_a", "breast_b"} for parts in requested.values()), requested
    assert "clusters" not in requested and "training_dataset" not in requested and "cellvit_detailed" not in requested


def test_observing_an_unchanged_atlas_rebuilds_nothing(world):
    home, instance, resources = world
    defs = sthelar_definitions.defs
    first = evaluate_automation_conditions(defs=defs, instance=instance)
    observe([reference_atlas], instance=instance, resources=resources)  # same bytes, new observation
    again = evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert _requested(again) == {}
    (home / "references" / "skin.h5ad").write_bytes(b"skin atlas v2")
    observe([reference_atlas], instance=instance, resources=resources)
    skin = evaluate_automation_conditions(defs=defs, instance=instance, cursor=again.cursor)
    assert _requested(skin)["tangram_labels"] == {"skin_a"}


def test_reference_versions_are_the_atlas_hashes_per_slide(world):
    _, instance, _ = world
    from sthelar_platform.core.hashing import sha256_text

    records = instance.fetch_observations(AssetKey("reference_atlas"), limit=50).records
    versions = {r.asset_observation.partition: r.asset_observation.tags["dagster/data_version"] for r in records}
    assert versions == {slide: sha256_text(f"{tissue} atlas v1") for slide, tissue in SLIDES.items()}


def test_qc_refresh_is_scheduled_nightly_and_targets_dbt_and_the_dashboard():
    from dagster import DefaultScheduleStatus, build_schedule_context

    schedule = next(s for s in sthelar_definitions.defs.schedules if s.name == "qc_nightly")
    assert schedule.cron_schedule == "0 2 * * *" and schedule.default_status == DefaultScheduleStatus.RUNNING
    requests = schedule.evaluate_tick(build_schedule_context()).run_requests
    assert len(requests) == 1
    job = sthelar_definitions.defs.resolve_job_def(schedule.job_name)
    selected = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    assert {"slide_summary", "patch_quality", "qc_dashboard"} <= selected


def test_reference_watch_observes_the_atlases_on_a_schedule():
    schedule = next(s for s in sthelar_definitions.defs.schedules if s.name == "reference_watch")
    job = sthelar_definitions.defs.resolve_job_def(schedule.job_name)
    assert schedule.cron_schedule == "*/15 * * * *"
    assert {k.to_user_string() for k in job.asset_layer.asset_graph.get_all_asset_keys()} >= {"reference_atlas"}
