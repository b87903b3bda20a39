"""The landing area: half-copied or changing uploads wait; complete and settled ones are taken once."""

import os
import shutil
import time

import pytest

from sthelar_platform.ingest.landing import LandingCursor, inspect_folder, scan


def _upload(tiny_slide, incoming, slide_id="new_slide", skip=()):
    """Copy the tiny slide into the landing layout, leaving out the files in ``skip`` (a half copy)."""
    dst = incoming / slide_id
    shutil.copytree(tiny_slide / "xenium", dst / "xenium",
                    ignore=lambda d, names: [n for n in names if n in skip])
    he = next((tiny_slide / "he").glob("*he_image.ome.tif"))
    shutil.copy2(he, dst / he.name)
    (dst / "slide.yaml").write_text("tissue: breast\nsynthetic: true\n")  # the H&E is found by its name
    return dst


def _age(folder, seconds):
    t = time.time() - seconds
    for p in folder.rglob("*"):
        os.utime(p, (t, t))


def test_half_copied_folder_waits_and_names_what_is_missing(tiny_slide, tmp_path):
    folder = _upload(tiny_slide, tmp_path / "incoming", skip=("transcripts.parquet",))
    _age(folder, 600)
    f = inspect_folder(folder)
    assert not f.complete and f.missing == ("xenium/transcripts.parquet",)
    cursor = LandingCursor()
    for _ in range(3):
        ready, waiting, cursor = scan(tmp_path / "incoming", cursor, settle_s=1)
        assert ready == [] and [w.slide_id for w in waiting] == ["new_slide"]


def test_complete_folder_is_ready_after_two_identical_looks_then_taken_once(tiny_slide, tmp_path):
    incoming = tmp_path / "incoming"
    folder = _upload(tiny_slide, incoming)
    _age(folder, 600)
    ready, _, cursor = scan(incoming, LandingCursor(), settle_s=60)
    assert ready == []  # first look: not yet known to be stable
    ready, _, cursor = scan(incoming, cursor, settle_s=60)
    assert [r.slide_id for r in ready] == ["new_slide"] and ready[0].spec.tissue == "breast"
    assert ready[0].spec.xenium_dir == folder / "xenium" and ready[0].spec.synthetic
    ready, waiting, cursor = scan(incoming, cursor, settle_s=60)
    assert ready == [] and waiting == []  # this upload was already taken


def test_a_file_still_growing_or_too_recent_waits(tiny_slide, tmp_path):
    incoming = tmp_path / "incoming"
    folder = _upload(tiny_slide, incoming)
    _age(folder, 600)
    _, _, cursor = scan(incoming, LandingCursor(), settle_s=60)
    with open(folder / "xenium" / "transcripts.parquet", "ab") as fh:  # the copy is still being written
        fh.write(b"\0" * 16)
    ready, _, cursor = scan(incoming, cursor, settle_s=60)
    assert ready == []
    ready, _, cursor = scan(incoming, cursor, settle_s=60)
    assert ready == []  # unchanged between looks now, but changed less than settle_s ago
    _age(folder, 600)
    _, _, cursor = scan(incoming, cursor, settle_s=60)
    ready, _, _ = scan(incoming, cursor, settle_s=60)
    assert [r.slide_id for r in ready] == ["new_slide"]


def test_a_replaced_upload_is_taken_again(tiny_slide, tmp_path):
    incoming = tmp_path / "incoming"
    folder = _upload(tiny_slide, incoming)
    _age(folder, 600)
    _, _, cursor = scan(incoming, LandingCursor(), settle_s=1)
    ready, _, cursor = scan(incoming, cursor, settle_s=1)
    first = ready[0].signature
    (folder / "slide.yaml").write_text("tissue: skin\nhe_image: " + ready[0].spec.he_image.name + "\n")
    _age(folder, 600)
    _, _, cursor = scan(incoming, cursor, settle_s=1)
    ready, _, _ = scan(incoming, cursor, settle_s=1)
    assert len(ready) == 1 and ready[0].signature != first and ready[0].spec.tissue == "skin"


@pytest.mark.parametrize("name, slide_yaml, error", [
    ("Bad Name", "tissue: breast\n", "invalid slide id"),
    ("ok_slide", "tissue: [not, a, name]\n", "invalid tissue"),
    ("ok_slide", "slide_id: other\ntissue: breast\n", "names slide 'other'"),
])
def test_bad_folder_or_slide_yaml_is_reported_not_taken(tmp_path, name, slide_yaml, error):
    folder = tmp_path / "incoming" / name
    folder.mkdir(parents=True)
    (folder / "slide.yaml").write_text(slide_yaml)
    f = inspect_folder(folder)
    assert not f.complete and error in (f.error or "")


@pytest.mark.parametrize("escape", ["he_image_path", "xenium_dir_path", "symlinked_file", "symlinked_folder"])
def test_an_upload_that_points_outside_its_folder_is_refused(tiny_slide, tmp_path, escape):
    incoming = tmp_path / "incoming"
    folder = _upload(tiny_slide, incoming)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(folder, elsewhere)  # valid files, but not inside the upload
    he = next(folder.glob("*he_image.ome.tif"))
    if escape == "he_image_path":
        (folder / "slide.yaml").write_text(f"tissue: breast\nhe_image: ../../elsewhere/{he.name}\n")
    elif escape == "xenium_dir_path":
        (folder / "slide.yaml").write_text(f"tissue: breast\nxenium_dir: {elsewhere / 'xenium'}\n")
    elif escape == "symlinked_file":
        he.unlink()
        he.symlink_to(elsewhere / he.name)
    else:
        shutil.rmtree(folder / "xenium")
        (folder / "xenium").symlink_to(elsewhere / "xenium", target_is_directory=True)
    _age(folder, 600)
    f = inspect_folder(folder)
    assert not f.complete
    assert "slide.yaml" in f.error and "must stay inside their folder" in f.error and "elsewhere" in f.error
    cursor = LandingCursor()
    for _ in range(2):
        ready, waiting, cursor = scan(incoming, cursor, settle_s=1)
        assert ready == [] and waiting[0].error == f.error


def test_a_symlink_that_stays_inside_the_upload_is_fine(tiny_slide, tmp_path):
    folder = _upload(tiny_slide, tmp_path / "incoming")
    he = next(folder.glob("*he_image.ome.tif"))
    (folder / "scans").mkdir()
    he.rename(folder / "scans" / he.name)
    he.symlink_to(folder / "scans" / he.name)
    _age(folder, 600)
    assert inspect_folder(folder).complete
