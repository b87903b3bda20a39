"""Bad config files, unsafe manifests and uploads, and a full disk: refused with one line naming the
file, the problem and the fix; earlier outputs stay."""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from case_homes import assert_refused, outputs_digest, the_one_error

from sthelar_platform.core.config import PACKAGED_CONFIG_DIR
from sthelar_platform.ingest.landing import inspect_folder

ROOT = Path(__file__).resolve().parents[2]


def _edited(name: str, change) -> str:
    cfg = yaml.safe_load((PACKAGED_CONFIG_DIR / f"{name}.yaml").read_text())
    change(cfg)
    return yaml.safe_dump(cfg)


CONFIG_CASES = {
    "residual_limit_negative": ("pipeline", lambda c: c["registration"].update(max_median_residual_um=-3),
                                "he_registration", "registration.max_median_residual_um"),
    "tiling_unknown_key": ("tiling", lambda c: c.update(patch_sise=256), "patches_40x", "unknown key"),
    "annotation_not_yaml": ("annotation", None, "tangram_labels", "not valid YAML"),
}


@pytest.mark.parametrize("name", sorted(CONFIG_CASES))
def test_bad_config_file_stops_the_stage_with_file_and_key(case, name):
    config, change, asset, problem = CONFIG_CASES[name]
    before = outputs_digest(case.home)
    path = case.config_dir / f"{config}.yaml"
    path.write_text(_edited(config, change) if change else "tangram: {device: [cpu\n")
    error = the_one_error(case, asset)
    assert_refused(error, path, problem, before, case.home)


def _slides_add(case, manifest: Path):
    return subprocess.run([sys.executable, "-m", "sthelar_cli", "--home", str(case.home), "slides", "add", "--manifest",
                           str(manifest)], capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.parametrize("entry,problem", [
    ({"slide_id": "../../etc"}, "slide id"),
    ({"slide_id": "ok_id", "xenium_dir": "__he__"}, "should be a folder"),
])
def test_unsafe_or_wrong_manifest_entry_is_refused_and_the_catalog_kept(case, tmp_path, entry, problem):
    before, catalog = outputs_digest(case.home), (case.home / "catalog.yaml").read_bytes()
    row = {"slide_id": "x", "tissue": "breast", "xenium_dir": str(case.bundle), "he_image": str(case.spec.he_image),
           **entry}
    if row["xenium_dir"] == "__he__":
        row["xenium_dir"] = str(case.spec.he_image)
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"slides": [row]}))
    r = _slides_add(case, manifest)
    assert r.returncode != 0
    message = r.stderr.strip().splitlines()[-1].removeprefix("error: ")
    assert_refused(message, manifest, problem, before, case.home)
    assert (case.home / "catalog.yaml").read_bytes() == catalog


def test_upload_escaping_its_folder_is_refused(case):
    before = outputs_digest(case.home)
    upload = case.home / "landing" / "incoming" / "sneaky"
    upload.mkdir(parents=True)
    (upload / "xenium").symlink_to(case.bundle, target_is_directory=True)
    (upload / "he_image.ome.tif").symlink_to(case.spec.he_image)
    (upload / "slide.yaml").write_text("tissue: breast\n")
    folder = inspect_folder(upload)
    assert not folder.complete
    assert_refused(folder.error, upload / "slide.yaml", "must stay inside their folder", before, case.home)


CHILD = """
import json, sys
from dagster import AssetKey, DagsterInstance, materialize
import sthelar_definitions as d
instance = DagsterInstance.ephemeral()
instance.add_dynamic_partitions("slides", ["tiny"])
r = materialize(d.ALL_ASSETS, selection=[AssetKey("slide_export")], partition_key="tiny", instance=instance,
                resources=d.build_resources(sys.argv[1]), raise_on_error=False)
errors = []
for e in r.all_events:
    if e.event_type_value == "STEP_FAILURE":
        err = e.event_specific_data.error
        while err.cause is not None and (err.cls_name or "").startswith("Dagster"):
            err = err.cause
        errors.append(err.message.split(": ", 1)[1].strip())
print(json.dumps({"success": r.success, "errors": errors}))
"""


def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # a write past it fails with EFBIG, as on a full disk
    return apply


def test_a_full_disk_during_export_names_the_output_and_keeps_the_earlier_one(case):
    before = outputs_digest(case.home)
    largest = max(p.stat().st_size for p in (case.home / "exports").rglob("*") if p.is_file())
    limit = 12 << 20
    assert largest > limit and (case.home / "lineage.duckdb").stat().st_size < limit // 2
    env = {**os.environ, "STHELAR_HOME": str(case.home)}
    r = subprocess.run([sys.executable, "-c", CHILD, str(case.home)], capture_output=True, text=True, timeout=600,
                       cwd=ROOT, env=env, preexec_fn=_limit_file_size(limit))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert not out["success"] and len(out["errors"]) == 1, out
    assert_refused(out["errors"][0], case.home / "exports" / "tiny", "no space to write this output", before, case.home)
    assert not [p for p in (case.home / "exports").iterdir() if ".tmp-" in p.name]  # the partial export is gone
