import pytest
import yaml

from sthelar_platform.core.errors import InputError
from sthelar_platform.ingest.manifest import SlideCatalog, load_manifest, specs_from_folder


def _write(path, slides):
    path.write_text(yaml.safe_dump({"slides": slides}))
    return path


def _entry(slide, sid="s1"):
    return {"slide_id": sid, "tissue": "breast", "xenium_dir": str(slide / "xenium"),
            "he_image": str(slide / "he" / "tiny_he_image.ome.tif")}


def test_generated_manifest_loads_with_relative_paths(tiny_cohort):
    (spec,) = load_manifest(tiny_cohort / "manifest.yaml")
    assert spec.slide_id == "tiny" and spec.synthetic and spec.xenium_dir.is_dir() and spec.reference.exists()


def test_patient_id_is_kept_through_the_catalog(tiny_slide, tmp_path):
    (spec,) = load_manifest(_write(tmp_path / "m.yaml", [{**_entry(tiny_slide), "patient_id": "P-07"}]))
    assert spec.patient_id == "P-07" and spec.to_record()["patient_id"] == "P-07"
    catalog = SlideCatalog(tmp_path / "catalog.yaml")
    catalog.add([spec])
    assert catalog.get("s1").patient_id == "P-07"


def test_csv_manifest(tiny_slide, tmp_path):
    p = tmp_path / "m.csv"
    e = _entry(tiny_slide)
    p.write_text(",".join(e) + "\n" + ",".join(e.values()) + "\n")
    assert load_manifest(p)[0].he_image.name == "tiny_he_image.ome.tif"


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda e: e.update(xenium_dir="/does/not/exist"), "does not exist"),
    (lambda e: e.update(slide_id="../x"), "invalid slide id"),
    (lambda e: e.update(slide_id="has space"), "invalid slide id"),
    (lambda e: e.pop("he_image"), "lacks he_image"),
    (lambda e: e.update(colour="red"), "unknown manifest field"),
    (lambda e: e.update(patient_id="P 1/../x"), "invalid patient_id"),
])
def test_bad_entries_fail_naming_manifest_and_fix(tiny_slide, tmp_path, mutate, expected):
    e = _entry(tiny_slide)
    mutate(e)
    p = _write(tmp_path / "m.yaml", [e])
    with pytest.raises(InputError) as err:
        load_manifest(p)
    assert str(p) in str(err.value) and expected in str(err.value) and "Fix:" in str(err.value)


def test_duplicate_slide_ids_rejected(tiny_slide, tmp_path):
    p = _write(tmp_path / "m.yaml", [_entry(tiny_slide), _entry(tiny_slide)])
    with pytest.raises(InputError, match="duplicate slide id 's1'"):
        load_manifest(p)


def test_not_a_manifest(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("just text")
    with pytest.raises(InputError, match="no 'slides:' list"):
        load_manifest(p)


def test_catalog_refuses_repointing_without_replace(tiny_slide, tmp_path):
    cat = SlideCatalog(tmp_path / "catalog.yaml")
    spec = specs_from_folder(tiny_slide, "breast", "s1")
    cat.add([spec])
    cat.add([spec])  # same slide again is idempotent
    other = specs_from_folder(tiny_slide, "skin", "s1")
    with pytest.raises(InputError, match="already registered"):
        cat.add([other])
    cat.add([other], replace=True)
    assert cat.get("s1").tissue == "skin"
    with pytest.raises(InputError, match="not registered"):
        cat.get("s2")


def _add_slides(catalog: str, prefix: str, n: int) -> None:
    from pathlib import Path

    from sthelar_platform.ingest.manifest import SlideCatalog, SlideSpec

    for i in range(n):
        SlideCatalog(catalog).add([SlideSpec(slide_id=f"{prefix}{i:02d}", tissue="breast",
                                             xenium_dir=Path(f"/data/{prefix}{i}/xenium"),
                                             he_image=Path(f"/data/{prefix}{i}/he.ome.tif"))])


def test_two_concurrent_slides_add_both_land(tmp_path):
    import multiprocessing as mp

    from sthelar_platform.ingest.manifest import SlideCatalog

    catalog = str(tmp_path / "catalog.yaml")
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_add_slides, args=(catalog, prefix, 15)) for prefix in ("a", "b")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    ids = sorted(s.slide_id for s in SlideCatalog(catalog).list())
    assert ids == sorted([f"a{i:02d}" for i in range(15)] + [f"b{i:02d}" for i in range(15)])
