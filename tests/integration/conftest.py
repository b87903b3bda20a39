"""A tiny SYNTHETIC slide taken through every stage (slide pipeline, short CPU training, evaluation,
whole-slide predictions): shared by the model, QC and browser tests of one worker."""

import shutil

import pytest
import yaml
from dagster import DagsterInstance, materialize

import sthelar_definitions
from sthelar_platform.core.config import PACKAGED_CONFIG_DIR
from sthelar_platform.ingest.manifest import SlideCatalog, load_manifest

SLIDE = sthelar_definitions.ALL_ASSETS
COHORT = sthelar_definitions.COHORT_ASSETS


def _short_schedule(config_dir, **overrides):
    cfg = yaml.safe_load((PACKAGED_CONFIG_DIR / "training.yaml").read_text())
    cfg["dataset"]["block_px"] = 768  # one tiny slide: small blocks so that val and test get patches
    # the tiny slide holds ~6 patches at 20x, too few for three splits: its models train on the 40x ones
    cfg["training"]["schedules"]["cpu"].update({"epochs": 3, "batch_size": 4, "max_batches_per_epoch": 5,
                                                "max_val_batches": 2, "lr": 0.002, "magnification": "40x",
                                                **overrides})
    config_dir.mkdir(exist_ok=True)
    (config_dir / "training.yaml").write_text(yaml.safe_dump(cfg))


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory, tiny_cohort):
    tmp = tmp_path_factory.mktemp("model_home")
    landing = tmp / "landing"
    shutil.copytree(tiny_cohort, landing)
    home = tmp / "home"
    SlideCatalog(home / "catalog.yaml").add(load_manifest(landing / "manifest.yaml"))
    config_dir = tmp / "config"
    _short_schedule(config_dir)
    mp = pytest.MonkeyPatch()  # the short schedule applies to these runs only, not to later tests
    try:
        mp.setenv("STHELAR_CONFIG_DIR", str(config_dir))
        mp.setenv("STHELAR_DEVICE", "cpu")
        instance = DagsterInstance.ephemeral()
        instance.add_dynamic_partitions("slides", ["tiny"])
        resources = sthelar_definitions.build_resources(str(home))
        slide = materialize(SLIDE, partition_key="tiny", instance=instance, resources=resources)
        cohort = materialize(COHORT, instance=instance, resources=resources, raise_on_error=False)
        predictions = materialize(sthelar_definitions.PREDICTION_ASSETS, partition_key="tiny", instance=instance,
                                  resources=resources, raise_on_error=False)
    finally:
        mp.undo()
    return home, instance, resources, {"slide": slide, "cohort": cohort, "predictions": predictions}


