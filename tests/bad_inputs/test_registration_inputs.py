"""Bad H&E scans and alignment files: `he_image`, `he_registration` and `registered_he` refuse each
with one line; earlier outputs stay."""

import shutil

import numpy as np
import pydicom
import pydicom.data
import pytest
import tifffile
from case_homes import assert_refused, outputs_digest, replace_file, repoint, the_one_error, truncate


def _tiff(path, array, **kw):
    path.unlink()
    tifffile.imwrite(path, array, **kw)
    return path


def _blank_he(path):
    """Empty tissue: a white slide of the right size and pixel size."""
    with tifffile.TiffFile(path) as tf:
        shape = tf.series[0].shape
    white = np.full(shape, 245, np.uint8)
    path.unlink()
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(white, photometric="rgb", metadata={"axes": "YXS", "PhysicalSizeX": 0.2125 * 1.2,
                                                      "PhysicalSizeY": 0.2125 * 1.2}, tile=(256, 256))
    return path


def _csv(text):
    return lambda case: replace_file(case.spec.alignment_csv, text)


def _csv_scaled(factor):
    """The same matrix with its linear part scaled (a matrix written in µm instead of pixels)."""
    def mutate(case):
        m = np.loadtxt(case.spec.alignment_csv, delimiter=",")
        m[:2, :2] *= factor
        return replace_file(case.spec.alignment_csv, "\n".join(",".join(f"{v:.10g}" for v in r) for r in m) + "\n")
    return mutate


HE_CASES = {
    "he_truncated": (lambda c: truncate(c.spec.he_image, 0.4), "he_image", "truncated", ()),
    "he_not_an_image": (lambda c: replace_file(c.spec.he_image, "<html>login expired</html>"), "he_image",
                        "not a readable TIFF", ()),
    "he_grayscale": (lambda c: _tiff(c.spec.he_image, np.zeros((600, 600), np.uint8)), "he_image", "not an RGB image", ()),
    "he_too_small": (lambda c: _tiff(c.spec.he_image, np.zeros((120, 120, 3), np.uint8), photometric="rgb"),
                     "he_image", "too small", ()),
}

def _largest(folder):
    return max(folder.glob("*.dcm"), key=lambda p: p.stat().st_size)  # the full-resolution instance


def _second_series(folder, tiny_dicom):
    shutil.copytree(tiny_dicom, folder / "rescan")
    for p in (folder / "rescan").glob("*.dcm"):  # the same scan exported again: a new series UID
        ds = pydicom.dcmread(p)
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.save_as(p)


def _only_a_ct(folder, _):
    for p in folder.glob("*.dcm"):
        p.unlink()
    shutil.copy(pydicom.data.get_testdata_file("CT_small.dcm"), folder / "CT_small.dcm")


DICOM_CASES = {  # a DICOM WSI series folder (the tiny slide's, from wsidicomizer) broken one way each
    "dicom_two_series": (_second_series, "volume images of 2 series"),
    "dicom_missing_instance": (lambda f, _: _largest(f).unlink(), "full-resolution instance"),
    "dicom_not_a_slide": (_only_a_ct, "no whole-slide microscopy image"),
    "dicom_truncated_instance": (lambda f, _: truncate(_largest(f), 0.5), "truncated"),
    "dicom_empty_folder": (lambda f, _: [p.unlink() for p in f.glob("*.dcm")], "holds no DICOM file"),
}

REGISTRATION_CASES = {
    "csv_two_rows": (_csv("1,0,0\n0,1,0\n"), "3x3 matrix"),
    "csv_nan": (_csv("nan,0,0\n0,1,0\n0,0,1\n"), "non-finite"),
    "csv_singular": (_csv("0,0,5\n0,0,7\n0,0,1\n"), "not invertible"),
    "csv_not_affine": (_csv("1,0,0\n0,1,0\n0.5,0,1\n"), "expected [0, 0, 1]"),
    "csv_text": (_csv("transform\nsee attached\n"), "non-numeric"),
    "csv_in_micrometres": (_csv_scaled(0.2125 * 1.2), "far from the pixel-size ratio"),
}


@pytest.mark.parametrize("name", sorted(HE_CASES))
def test_bad_he_scan_is_refused_and_nothing_is_lost(case, name):
    mutate, asset, problem, _ = HE_CASES[name]
    before = outputs_digest(case.home)
    mutate(case)
    error = the_one_error(case, asset)
    assert_refused(error, case.spec.he_image, problem, before, case.home)


@pytest.mark.parametrize("name", sorted(DICOM_CASES))
def test_bad_dicom_series_is_refused_and_nothing_is_lost(case, tiny_dicom, tmp_path, name):
    mutate, problem = DICOM_CASES[name]
    before = outputs_digest(case.home)
    series = shutil.copytree(tiny_dicom, tmp_path / "he_series")
    mutate(series, tiny_dicom)
    repoint(case, he_image=series)
    error = the_one_error(case, "he_image")
    assert_refused(error, series, problem, before, case.home)


def test_an_mrxs_file_without_its_data_folder_is_refused(case, tmp_path):
    before = outputs_digest(case.home)
    scan = tmp_path / "slide.mrxs"  # copied alone: its Slidedat.ini, Index.dat and Data*.dat stayed behind
    scan.write_bytes(b"3DHISTECH MRXS\r\n")
    repoint(case, he_image=scan)
    error = the_one_error(case, "he_image")
    assert_refused(error, scan, "MRXS data folder slide/ is missing", before, case.home)


def test_a_format_no_reader_here_is_tested_on_is_refused_naming_the_converter(case, tmp_path):
    before = outputs_digest(case.home)
    scan = tmp_path / "slide.vsi"  # Olympus: an index file beside a folder of .ets files
    scan.write_bytes(b"II*\x00")
    repoint(case, he_image=scan)
    error = the_one_error(case, "he_image")
    assert_refused(error, scan, "Olympus VSI", before, case.home)
    assert "bfconvert" in error and "QuPath" in error


@pytest.mark.parametrize("name", sorted(REGISTRATION_CASES))
def test_bad_alignment_csv_is_refused_and_nothing_is_lost(case, name):
    mutate, problem = REGISTRATION_CASES[name]
    before = outputs_digest(case.home)
    mutate(case)
    error = the_one_error(case, "he_registration")
    assert_refused(error, case.spec.alignment_csv, problem, before, case.home)


def test_blank_he_without_tissue_stops_registration_and_keeps_the_earlier_one(case):
    before = outputs_digest(case.home)
    _blank_he(case.spec.he_image)
    error = the_one_error(case, "he_image", "he_registration")
    # the new scan itself is a valid image (he_image takes it); registration refuses to place it
    assert_refused(error, case.output("he_image") / "he_image.ome.tif", "nuclei detected", before, case.home,
                   changed=("warehouse/he_image/",))


def test_corrupt_registration_output_stops_registered_he_with_its_name(case):
    before = outputs_digest(case.home)
    target = case.output("he_registration") / "registration.json"
    replace_file(target, '{"qc": {"transform": [[1, 0')
    error = the_one_error(case, "registered_he")
    assert_refused(error, target, "not a readable registration record", before, case.home,
                   changed=("warehouse/he_registration/",))
