"""The `sthelar` command line as a user runs it."""

import subprocess
import sys

import pytest
import yaml

from sthelar_platform.core.lineage import LineageStore

pytestmark = pytest.mark.slow  # the CLI runs whole pipelines through the multiprocess executor, and the benchmark
def _cli(*args, home):
    return subprocess.run([sys.executable, "-m", "sthelar_cli", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=600)


def test_slides_add_list_and_materialize_with_multiprocess_executor(tiny_cohort, tmp_path):
    """The whole slide pipeline from the command line, on a slide whose H&E is an Aperio .svs."""
    from sthelar_platform.synth.he_formats import write_he_variant

    m = yaml.safe_load((tiny_cohort / "manifest.yaml").read_text())
    entry = {k: str(tiny_cohort / v) if k in ("xenium_dir", "he_image", "alignment_csv", "reference") else v
             for k, v in m["slides"][0].items()}
    entry["he_image"] = str(write_he_variant(entry["he_image"], tmp_path / "scans", "svs"))
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"slides": [entry]}))
    home = tmp_path / "home"
    r = _cli("slides", "add", "--manifest", str(manifest), home=home)
    assert r.returncode == 0, r.stderr
    r = _cli("slides", "list", home=home)
    assert "tiny\tbreast\tSYNTHETIC" in r.stdout
    r = _cli("materialize", "--slide", "tiny", home=home)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "tiny: ok" in r.stdout
    assert (home / "warehouse" / "he_image" / "tiny" / "he_image.ome.tif").exists()
    assert (home / "exports" / "tiny" / "cellvit").is_dir()  # through to the exports
    summary = yaml.safe_load((home / "warehouse" / "he_image" / "tiny" / "summary.json").read_text())
    assert summary["pixel_size_source"] == "Aperio description" and summary["stored_as"] == "converted"
    # the run is in the persistent Dagster instance the UI reads
    assert any((home / "dagster").rglob("*.db"))


def test_duplicate_ids_and_bad_manifest_exit_2_with_message(tiny_cohort, tmp_path):
    m = yaml.safe_load((tiny_cohort / "manifest.yaml").read_text())
    m["slides"] = m["slides"] * 2
    for e in m["slides"]:
        for k in ("xenium_dir", "he_image", "alignment_csv", "reference"):
            e[k] = str(tiny_cohort / e[k])
    bad = tmp_path / "dup.yaml"
    bad.write_text(yaml.safe_dump(m))
    r = _cli("slides", "add", "--manifest", str(bad), home=tmp_path / "h")
    assert r.returncode == 2 and "duplicate slide id 'tiny'" in r.stderr and "Fix:" in r.stderr


def test_bench_writes_each_stage_and_a_size_summary_with_its_commands(tmp_path):
    """`sthelar bench` on the tiny size: the real assets in a home of its own, per-stage JSON and the size summary."""
    import json

    home = tmp_path / "home"
    r = _cli("bench", "--size", "tiny", "--stage", "ingest", "--stage", "counts", home=home)
    assert r.returncode == 0, r.stdout + r.stderr
    counts = json.loads((home / "bench" / "tiny" / "counts.json").read_text())
    assert counts["peak_rss_mb"] > 50 and counts["inputs"]["n_genes"] == 116
    # the benchmark ran the real assets in a platform home of its own: their outputs, lineage and markers are there
    bench_home = home / "bench" / "tiny" / "home"
    assert (bench_home / "warehouse" / "cell_counts" / "tiny" / "cell.h5ad").exists()
    assert {r["asset_key"] for r in LineageStore(bench_home / "lineage.duckdb").query(
        "SELECT asset_key FROM materializations WHERE status = 'success'")} == {
        "xenium_slide", "he_image", "nucleus_counts", "cell_counts"}
    assert counts["wall_s"] == pytest.approx(sum(counts["inputs"]["step_seconds"].values()), abs=0.02)
    summary = json.loads((home / "bench" / "tiny" / "summary.json").read_text())
    assert list(summary["stages"]) == ["synth", "ingest", "counts"]
    assert summary["slide"]["n_cells"] == counts["inputs"]["n_cells"] > 200
    assert summary["slide"]["n_transcripts"] >= summary["stages"]["ingest"]["inputs"]["n_transcripts"]
    assert summary["stages"]["counts"]["command"] == f"sthelar --home {home} bench --size tiny --stage counts"
    # another size keeps its own results
    assert not (home / "bench" / "counts.json").exists()
