"""The whole-slide layer: every axis order reads as (y, x, rgb), pixel sizes come from the documented
places in order, and nothing reads a whole level that is too large."""

import numpy as np
import pytest
import tifffile

from sthelar_platform.core.errors import InputError
from sthelar_platform.core.wsi import WholeSlide

RGB = np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8)


@pytest.mark.parametrize("layout", ["YXS", "CYX", "SYX", "1YXS", "CYX_unsqueezed"])
def test_every_axis_order_reads_as_rows_columns_colour(tmp_path, layout):
    path = tmp_path / f"{layout}.tif"
    if layout == "YXS":
        tifffile.imwrite(path, RGB, photometric="rgb", tile=(64, 64))
    elif layout == "CYX":
        tifffile.imwrite(path, RGB.transpose(2, 0, 1), ome=True, metadata={"axes": "CYX"}, tile=(64, 64))
    elif layout == "SYX":
        tifffile.imwrite(path, RGB.transpose(2, 0, 1), photometric="rgb", planarconfig="separate", tile=(64, 64))
    elif layout == "1YXS":
        tifffile.imwrite(path, RGB[None], ome=True, photometric="rgb", metadata={"axes": "TYXS"}, tile=(64, 64))
    else:  # a leading singleton the reader does not squeeze away: ZCYX with Z = 1
        tifffile.imwrite(path, RGB.transpose(2, 0, 1)[None], ome=True, metadata={"axes": "ZCYX"}, tile=(64, 64))
    with WholeSlide(path) as slide:
        assert (slide.height, slide.width, slide.is_rgb) == (300, 200, True)
        assert np.array_equal(slide.read_region(0, 10, 20, 50, 40), RGB[10:60, 20:60])


def _page(tmp_path, name, **kw):
    path = tmp_path / name
    tifffile.imwrite(path, RGB, photometric="rgb", tile=(64, 64), **kw)
    return path


def test_pixel_size_sources_in_order(tmp_path):
    ome = tmp_path / "ome.ome.tif"
    tifffile.imwrite(ome, RGB, ome=True, photometric="rgb", metadata={"axes": "YXS", "PhysicalSizeX": 250,
                                                                      "PhysicalSizeXUnit": "nm"},
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    tags = _page(tmp_path, "tags.tif", resolution=(25400 / 0.46, 25400 / 0.46), resolutionunit="INCH")
    aperio = _page(tmp_path, "a.svs", description="Aperio Image Library v12 \r\n200x300 |AppMag = 40|MPP = 0.2520",
                   metadata=None)
    dpi72 = _page(tmp_path, "dpi72.tif", resolution=(72, 72), resolutionunit="INCH")
    ndpi = _page(tmp_path, "ndpi.tif", metadata=None, extratags=[(65420, "I", 1, 1, True), (65421, "f", 1, 20.0, True),
                                                                 (271, "s", 0, "Hamamatsu", True)])
    expected = {ome: (0.25, "OME PhysicalSizeX"), tags: (0.46, "TIFF resolution tags"),
                aperio: (0.252, "Aperio description"), dpi72: (None, "none"), ndpi: (0.5, "NDPI magnification")}
    for path, (mpp, source) in expected.items():
        with WholeSlide(path) as slide:
            assert slide.mpp_source == source, path.name
            assert slide.mpp == (pytest.approx(mpp) if mpp else None), path.name


def test_whole_level_reads_are_refused_above_the_limit(tmp_path):
    with WholeSlide(_page(tmp_path, "big.tif")) as slide:
        assert slide.read_level(0).shape == (300, 200, 3)
        with pytest.raises(InputError, match="too large to read whole"):
            slide.read_level(0, max_pixels=10_000)


def test_a_stack_of_planes_is_not_an_h_and_e(tmp_path):
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, np.zeros((5, 64, 64, 3), np.uint8), ome=True, photometric="rgb", metadata={"axes": "ZYXS"})
    with pytest.raises(InputError, match="5 planes along axis 'Z'"):
        WholeSlide(path)


@pytest.mark.parametrize("compression,tolerance", [("lzw", 0), ("zlib", 0), ("jpeg", 60), ("jpeg2000", 8)])
def test_scanner_tile_codecs_decode(tmp_path, compression, tolerance):
    smooth = np.clip(RGB.astype(int) // 4 + 100, 0, 255).astype(np.uint8)  # JPEG-friendly content
    path = tmp_path / f"{compression}.tif"
    tifffile.imwrite(path, smooth, photometric="rgb", tile=(64, 64), compression=compression)
    with WholeSlide(path) as slide:
        out = slide.read_region(0, 0, 0, 300, 200)
    assert out.shape == (300, 200, 3)
    assert np.abs(out.astype(int) - smooth).mean() <= tolerance / 4 and np.abs(out.astype(int) - smooth).max() <= tolerance


@pytest.mark.parametrize(("shape0", "shape", "expected"), [
    ((1935, 1935), (968, 968), 2.0),     # halved, odd size rounded up (the platform's pyramid)
    ((1935, 1935), (967, 967), 2.0),     # rounded down (other writers)
    ((1935, 1001), (121, 63), 16.0),     # four halvings of unequal sides
    ((1000, 1000), (300, 300), 1000 / 300),  # not a halving pyramid: the plain ratio
])
def test_level_downsample_is_the_nominal_power_of_two(shape0, shape, expected):
    from sthelar_platform.core.wsi import level_downsample

    assert level_downsample(shape0, shape) == pytest.approx(expected)
