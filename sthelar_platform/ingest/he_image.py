"""The H&E scan as the lab has it, turned once into the platform's own pyramid.

Any scan the whole-slide layer opens (SVS, NDPI, OME-TIFF in any axis order, generic tiled or
single-level TIFF, JPEG / JPEG 2000 / LZW / deflate tiles, a DICOM WSI series folder, MRXS) becomes
one tiled ``YXS`` uint8 OME-TIFF with 2x levels down to thumbnail size and its pixel size in the OME
metadata. The conversion is
streamed region by region (each level from the one above, area-averaged, through temporary
single-level files), so peak memory does not grow with the slide. A scan that already is such a
pyramid is hard-linked, not copied. That file is the only stored copy: every later stage reads it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from sthelar_platform.core.atomic import link_or_copy
from sthelar_platform.core.errors import InputError
from sthelar_platform.core.imaging import open_pyramid, read_level, thumbnail_level, write_averaged_pyramid
from sthelar_platform.core.scans import open_slide
from sthelar_platform.core.thumbnails import save_png
from sthelar_platform.core.warehouse import HEImageFolder
from sthelar_platform.core.wsi import SlideReader

FIX_IMAGE = "export the H&E as an RGB whole-slide image (SVS, NDPI, MRXS, tiled OME-TIFF or DICOM WSI; see docs/formats.md)"


@dataclass(frozen=True)
class HEImageSummary:
    width: int
    height: int
    n_levels: int
    level_shapes: list[list[int]]
    pixel_size_um: float | None
    magnification: str
    dtype: str
    pixel_size_source: str = "none"
    source_axes: str = "YXS"
    source_levels: list[list[int]] | None = None
    stored_as: str = "converted"        # "hard link" (already the platform's pyramid) or "converted"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def magnification_of(pixel_size_um: float | None, ranges: Mapping[str, tuple[float, float]]) -> str:
    """The magnification name whose µm/px range (config ``he_image.magnification_um_per_px``) holds the size."""
    if pixel_size_um is None:
        return "unknown"
    for name, (lo, hi) in ranges.items():
        if lo <= pixel_size_um <= hi:
            return name
    return f"other ({pixel_size_um:.3f} µm/px)"


def validate_he(path: str | Path) -> SlideReader:
    """The scan, opened; an InputError names what makes it unusable as an H&E."""
    slide = open_slide(path)
    problem, fix = None, FIX_IMAGE
    if not slide.is_rgb:
        problem = f"not an RGB image (axes {slide.axes}, level 0 shape {slide.level0_shape})"
    elif slide.dtype != "uint8":
        problem = f"H&E pixels are {slide.dtype}, expected uint8 RGB"
    elif min(slide.height, slide.width) < 256:
        problem = f"image too small ({slide.width} x {slide.height} px) for 256 px patches"
        fix = "use the full-resolution whole-slide image"
    if problem:
        slide.close()
        raise InputError(path, problem, fix)
    return slide


def is_platform_pyramid(slide: SlideReader) -> bool:
    """Already what ingest would write: tiled YXS uint8 with its OME pixel size, 2x levels (rounded either way)
    down to thumbnail size.
    """
    shapes = [(lv.height, lv.width) for lv in slide.levels]
    halving = all(abs(2 * h - ph) <= 1 and abs(2 * w - pw) <= 1 for (ph, pw), (h, w) in zip(shapes, shapes[1:]))
    small_enough = max(shapes[-1]) < 512  # as pyramid_shapes stops: the next level would be under 256 px
    return (slide.axes == "YXS" and slide.dtype == "uint8" and slide.all_levels_tiled and halving and small_enough
            and slide.mpp_source == "OME PhysicalSizeX")


def ingest_he(path: str | Path, out_dir: str | Path, magnifications: Mapping[str, tuple[float, float]],
              thumbnail_px: int = 512, assumed_um_per_px: float | None = None, workers: int = 2,
              progress: Callable[[str], None] | None = None) -> HEImageSummary:
    """Validate the scan and store it once as the platform's pyramid ``he_image.ome.tif`` in ``out_dir``.

    A scan without a pixel size is written with ``assumed_um_per_px`` in its OME metadata and
    ``pixel_size_um`` None in the summary: registration then searches a wide scale range and
    records the pixel size it implies.
    """
    path, out_dir = Path(path), Path(out_dir)
    slide = validate_he(path)
    folder = HEImageFolder(out_dir)
    dst = folder.image
    try:
        if is_platform_pyramid(slide):
            stored = link_or_copy(path, dst)
        else:
            write_averaged_pyramid(slide, dst, slide.mpp or assumed_um_per_px or 0.25, workers, progress)
            stored = "converted"
    finally:
        slide.close()
    own = open_pyramid(dst)
    levels = [list(shape) for shape in own.level_shapes]
    save_png(read_level(dst, thumbnail_level(own, thumbnail_px)), folder.thumbnail, max_px=thumbnail_px)
    summary = HEImageSummary(width=slide.width, height=slide.height, n_levels=len(levels), level_shapes=levels,
                             pixel_size_um=slide.mpp, magnification=magnification_of(slide.mpp, magnifications),
                             dtype=slide.dtype, pixel_size_source=slide.mpp_source, source_axes=slide.axes,
                             source_levels=[[lv.height, lv.width] for lv in slide.levels], stored_as=stored)
    folder.summary.write_text(summary.to_json())
    return summary
