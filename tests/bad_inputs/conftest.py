"""The bad-input corpus: one good slide home is built once; every case breaks one input of a private
copy, runs the stage that reads it in real Dagster, and checks two things. The error is one line that
names the file, the problem and the fix. Every earlier output is byte-identical afterwards.

Cases live in one file per stage (ingest, registration, annotation, tiling, model, config and
storage); the helpers are in tests/support/bad_inputs_support.py. Run this folder alone (`pytest
tests/bad_inputs -p no:xdist`) to get the count of bad inputs tried and lost.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from bad_inputs_support import COHORT_ASSETS, CORPUS, OUTPUT_ROOTS, SLIDE, SLIDE_ASSETS, CaseHome, link_tree
from dagster import AssetKey, DagsterInstance, materialize

import sthelar_definitions
from sthelar_platform.ingest.manifest import SlideCatalog, SlideSpec, load_manifest


@pytest.fixture(scope="session")
def good_home(tmp_path_factory, tiny_cohort) -> tuple[Path, SlideSpec]:
    """The tiny slide materialized through its exports and the training dataset."""
    root = tmp_path_factory.mktemp("bad_inputs_baseline")
    spec = load_manifest(tiny_cohort / "manifest.yaml")[0]
    home = root / "home"
    SlideCatalog(home / "catalog.yaml").add([spec])
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("slides", [SLIDE])
    resources = sthelar_definitions.build_resources(str(home))
    r = materialize(SLIDE_ASSETS, partition_key=SLIDE, instance=instance, resources=resources, raise_on_error=False)
    assert r.success, "the good baseline must build"
    r = materialize([*SLIDE_ASSETS, *COHORT_ASSETS], selection=[AssetKey("training_dataset")], instance=instance,
                    resources=resources, raise_on_error=False)
    assert r.success, "the good baseline's training dataset must build"
    return home, spec


@pytest.fixture
def case(good_home, tmp_path, monkeypatch) -> CaseHome:
    base, spec = good_home
    home = tmp_path / "home"
    home.mkdir()
    for root in OUTPUT_ROOTS:
        if (base / root).exists():
            link_tree(base / root, home / root)  # cheap; every write is a new file (atomic outputs)
    for name in ("lineage.duckdb", "catalog.yaml"):
        shutil.copy2(base / name, home / name)  # written in place: real copies
    inputs = tmp_path / "inputs"
    link_tree(spec.xenium_dir, inputs / "xenium")
    copies = {}
    for field in ("he_image", "alignment_csv", "reference"):
        src = getattr(spec, field)
        (inputs / field).mkdir(parents=True)
        copies[field] = inputs / field / src.name
        os.link(src, copies[field])
    private = replace(spec, xenium_dir=inputs / "xenium", **copies)
    SlideCatalog(home / "catalog.yaml").add([private], replace=True)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    monkeypatch.setenv("STHELAR_CONFIG_DIR", str(config_dir))  # empty: the packaged files, until a case writes one
    return CaseHome(home=home, spec=private, config_dir=config_dir)


def pytest_terminal_summary(terminalreporter):
    if CORPUS["tried"]:
        terminalreporter.write_line(f"bad-input corpus: {CORPUS['tried']} bad inputs tried, "
                                    f"{CORPUS['lost']} lost an earlier output")
