"""3DHISTECH MRXS slides written from OpenSlide's documentation of the format (synth/_mrxs.py), read by
OpenSlide through the whole-slide layer: the original's pixels on the scanner's padded camera grid, 2x
levels, the pixel size, and one-line refusals of a slide whose data folder is missing or damaged."""

import shutil

import numpy as np
import openslide
import pytest
import tifffile

from sthelar_platform.core.errors import InputError
from sthelar_platform.core.scans import open_slide
from sthelar_platform.core.wsi_openslide import OpenSlideScan
from sthelar_platform.synth._mrxs import write_mrxs


@pytest.fixture(scope="module")
def original(tiny_he):
    return tifffile.imread(tiny_he)


@pytest.fixture(scope="module")
def mrxs(original, tmp_path_factory):
    return write_mrxs(original, tmp_path_factory.mktemp("mrxs") / "slide.mrxs", mpp=0.2738, tile=256, divisions=2)


def _copy(mrxs, tmp_path):
    shutil.copytree(mrxs.with_suffix(""), tmp_path / "slide")
    return shutil.copy(mrxs, tmp_path / "slide.mrxs")


def test_openslide_recognises_the_layout(mrxs):
    assert openslide.OpenSlide.detect_format(str(mrxs)) == "mirax"
    with openslide.OpenSlide(str(mrxs)) as slide:
        props = slide.properties
        index_id = (mrxs.with_suffix("") / "Index.dat").read_bytes()[5:37].decode()
        assert props["mirax.GENERAL.SLIDE_ID"] == index_id and props["openslide.objective-power"] == "40"
        assert slide.level_downsamples == (1.0, 2.0, 4.0, 8.0)


def test_an_mrxs_slide_reads_as_the_original_on_its_padded_grid(mrxs, original):
    h, w = original.shape[:2]
    with open_slide(mrxs) as slide:
        assert isinstance(slide, OpenSlideScan)
        assert slide.mpp == pytest.approx(0.2738) and slide.mpp_source.startswith("OpenSlide")
        assert (slide.height, slide.width) == (-(-h // 512) * 512, -(-w // 512) * 512)  # whole 2 x 2 camera positions
        assert [lv.downsample for lv in slide.levels] == [1.0, 2.0, 4.0, 8.0]
        level0 = slide.read_region(0, 0, 0, slide.height, slide.width)
        error = np.abs(level0[:h, :w].astype(int) - original)
        assert error.mean() < 5 and np.percentile(error, 99) < 40  # JPEG Q90 4:2:0
        assert level0[h + 8 :, :].min() > 235 and level0[:, w + 8 :].min() > 235  # white padding, as scanners pad
        window = slide.read_region(1, 100, 120, 64, 48)  # a level-1 window: level-0 2x2 means
        expected = original[200:328, 240:336].reshape(64, 2, 48, 2, 3).mean(axis=(1, 3))
        assert window.shape == (64, 48, 3) and np.abs(window - expected).mean() < 5


def test_the_data_folder_is_required_and_named(mrxs, tmp_path):
    alone = shutil.copy(mrxs, tmp_path / "alone.mrxs")
    with pytest.raises(InputError, match="MRXS data folder alone/ is missing") as error:
        open_slide(alone)
    assert "\n" not in str(error.value) and "Slidedat.ini" in str(error.value)
    copy = _copy(mrxs, tmp_path)
    (tmp_path / "slide" / "Index.dat").unlink()
    with pytest.raises(InputError, match="has no Index.dat"):
        open_slide(copy)
    with pytest.raises(InputError, match="point he_image at slide.mrxs"):
        open_slide(tmp_path / "slide")


def test_a_truncated_data_file_is_named(mrxs, tmp_path):
    copy = _copy(mrxs, tmp_path)
    data = tmp_path / "slide" / "Data0000.dat"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])  # the position buffer at its end is gone
    with pytest.raises(InputError, match="OpenSlide cannot open the scan") as error:
        open_slide(copy)
    assert str(copy) in str(error.value)
