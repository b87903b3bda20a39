"""DICOM WSI series as wsidicomizer writes them (from the tiny slide's SVS variant), read through the
whole-slide layer: the SVS's pixels and pixel size, a folder or one instance, and one-line refusals of
what is not one complete WSI series."""

import shutil

import numpy as np
import pydicom
import pydicom.data
import pytest
import tifffile

from sthelar_platform.core.errors import InputError
from sthelar_platform.core.scans import open_slide
from sthelar_platform.core.wsi_dicom import WSI_SOP_CLASS, DicomSlide
from sthelar_platform.ingest.manifest import find_he_image, parse_slide
from sthelar_platform.synth.he_formats import write_he_variant


@pytest.fixture(scope="module")
def svs(tiny_he, tmp_path_factory):
    return write_he_variant(tiny_he, tmp_path_factory.mktemp("svs"), "svs")


def _headers(folder):
    return {p: pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))}


def _base_instance(folder):
    return next(p for p, ds in _headers(folder).items() if tuple(ds.ImageType)[2:] == ("VOLUME", "NONE"))


def _copy(folder, tmp_path, name="series"):
    return shutil.copytree(folder, tmp_path / name)


def test_wsidicomizer_writes_a_supplement_145_series(tiny_dicom):
    headers = _headers(tiny_dicom)
    assert {str(ds.SOPClassUID) for ds in headers.values()} == {WSI_SOP_CLASS}
    assert len({ds.SeriesInstanceUID for ds in headers.values()}) == 1
    kinds = sorted(tuple(ds.ImageType)[2] for ds in headers.values())
    assert kinds.count("VOLUME") == 3 and "LABEL" in kinds and "OVERVIEW" in kinds
    assert all(ds.DimensionOrganizationType == "TILED_FULL" for ds in headers.values())


def test_a_dicom_series_reads_as_the_svs_it_was_made_from(tiny_dicom, svs):
    with open_slide(tiny_dicom) as dicom, open_slide(svs) as source:
        assert isinstance(dicom, DicomSlide)
        assert (dicom.mpp, dicom.mpp_source) == (pytest.approx(source.mpp), "DICOM PixelSpacing")
        assert [(lv.height, lv.width, lv.downsample) for lv in dicom.levels] == \
            [(lv.height, lv.width, lv.downsample) for lv in source.levels]  # 4x steps, as the SVS has them
        assert dicom.is_rgb and dicom.dtype == "uint8" and "JPEG Baseline" in dicom.compression
        # the SVS's JPEG tiles are the DICOM frames, byte for byte: the same pixels decode
        assert np.array_equal(dicom.read_region(0, 0, 0, dicom.height, dicom.width), tifffile.imread(svs))
        window = dicom.read_region(1, 37, 51, 100, 80)
        assert window.shape == (100, 80, 3) and np.array_equal(window, source.read_region(1, 37, 51, 100, 80))


def test_jpeg_2000_frames_read_within_the_jpeg_decoders_rounding(tiny_he, svs, tmp_path):
    series = write_he_variant(tiny_he, tmp_path, "dicom_jpeg2000")
    with open_slide(series) as dicom, open_slide(svs) as source:
        assert "JPEG 2000" in dicom.compression
        difference = np.abs(dicom.read_region(0, 0, 0, 512, 512).astype(int) - source.read_region(0, 0, 0, 512, 512))
        # lossless JPEG 2000 of wsidicomizer's JPEG decode; two JPEG decoders differ by a few levels at most
        assert difference.max() <= 8 and difference.mean() < 0.5


def test_one_instance_opens_as_a_single_level_scan(tiny_dicom):
    with open_slide(_base_instance(tiny_dicom)) as one:
        assert len(one.levels) == 1 and (one.height, one.width) == (1935, 1801)


def test_two_series_in_one_folder_are_refused_naming_both(tiny_dicom, tiny_he, tmp_path):
    folder = _copy(tiny_dicom, tmp_path)
    other = write_he_variant(tiny_he, tmp_path / "other", "dicom")
    shutil.copytree(other, folder / "second_scan")
    with pytest.raises(InputError, match="volume images of 2 series") as error:
        open_slide(folder)
    assert "second_scan" in str(error.value) and "\n" not in str(error.value)


def test_a_missing_full_resolution_instance_is_refused(tiny_dicom, tmp_path):
    folder = _copy(tiny_dicom, tmp_path)
    _base_instance(folder).unlink()  # wsidicom alone would open the 4x level as if it were the scan
    with pytest.raises(InputError, match="full-resolution instance .* is missing"):
        open_slide(folder)


def test_a_missing_concatenation_part_is_refused(tiny_dicom, tmp_path):
    folder = _copy(tiny_dicom, tmp_path)
    base = _base_instance(folder)
    ds = pydicom.dcmread(base)
    ds.ConcatenationUID = pydicom.uid.generate_uid()
    ds.InConcatenationNumber, ds.InConcatenationTotalNumber = 1, 2  # part 2 of the level was never copied
    ds.save_as(base)
    with pytest.raises(InputError, match="2 concatenation parts has 1 here"):
        open_slide(folder)


def test_a_dicom_that_is_no_slide_is_refused(tmp_path):
    folder = tmp_path / "ct"
    folder.mkdir()
    shutil.copy(pydicom.data.get_testdata_file("CT_small.dcm"), folder / "CT_small.dcm")  # a real CT from pydicom
    with pytest.raises(InputError, match="no whole-slide microscopy image .*CT Image Storage"):
        open_slide(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("scan pending")
    with pytest.raises(InputError, match="holds no DICOM file"):
        open_slide(empty)


def test_a_truncated_instance_is_named_when_its_frames_decode(tiny_dicom, tmp_path):
    folder = _copy(tiny_dicom, tmp_path)
    base = _base_instance(folder)
    with open(base, "r+b") as fh:
        fh.truncate(base.stat().st_size // 2)
    with open_slide(folder) as slide, pytest.raises(InputError, match="cannot be read .* truncated") as error:
        slide.read_region(0, 0, 0, slide.height, slide.width)
    assert str(folder) in str(error.value)


def test_a_manifest_and_a_slide_folder_take_a_dicom_series_folder(tiny_dicom, tmp_path):
    bundle = tmp_path / "slide" / "xenium"
    bundle.mkdir(parents=True)
    shutil.copytree(tiny_dicom, tmp_path / "slide" / "he" / "series_1")
    assert find_he_image(tmp_path / "slide") == tmp_path / "slide" / "he" / "series_1"
    spec = parse_slide({"slide_id": "s", "tissue": "breast", "xenium_dir": "xenium", "he_image": "he/series_1"},
                       tmp_path / "slide", tmp_path / "slide" / "manifest.yaml")
    assert spec.he_image.is_dir()
