"""The H&E whole-slide image as given: validated, measured and kept as a lazy pyramid.

Registration (a later stage) decides how it maps onto Xenium; here we only make sure it
is a readable RGB pyramid and report its magnification from its pixel size.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from sthelar_platform.core.errors import InputError
from sthelar_platform.core.imaging import PyramidInfo, open_pyramid, read_level, thumbnail_level
from sthelar_platform.core.thumbnails import save_png

FIX_IMAGE = "export the H&E as an RGB tiled pyramidal OME-TIFF (e.g. bfconvert, QuPath or vips tiffsave --pyramid)"


@dataclass(frozen=True)
class HEImageSummary:
    width: int
    height: int
    n_levels: int
    level_shapes: list[list[int]]
    pixel_size_um: float | None
    magnification: str
    dtype: str

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


def validate_he(path: str | Path) -> PyramidInfo:
    """The pyramid of an H&E file that later stages can use; an InputError names what is wrong."""
    info = open_pyramid(path)  # also refuses a truncated file
    shape0 = info.level_shapes[0]
    if len(shape0) != 3 or 3 not in (shape0[-1], shape0[0]):
        raise InputError(path, f"not an RGB image (level 0 shape {shape0}, axes {info.axes})", FIX_IMAGE)
    if info.dtype != "uint8":
        raise InputError(path, f"H&E pixels are {info.dtype}, expected uint8 RGB", FIX_IMAGE)
    if min(shape0[:2] if shape0[-1] == 3 else shape0[1:]) < 256:
        raise InputError(path, f"image too small ({shape0}) for 256 px patches", "use the full-resolution whole-slide image")
    return info


def ingest_he(path: str | Path, out_dir: str | Path, magnifications: Mapping[str, tuple[float, float]],
              thumbnail_px: int = 512) -> HEImageSummary:
    """Validate and copy the H&E pyramid into ``out_dir`` with a thumbnail and summary."""
    info = validate_he(path)
    dst = Path(out_dir) / "he_image.ome.tif"
    shutil.copyfile(path, dst)
    save_png(read_level(dst, thumbnail_level(info, thumbnail_px)), Path(out_dir) / "thumbnail_he.png", max_px=thumbnail_px)
    summary = HEImageSummary(width=info.width, height=info.height, n_levels=len(info.level_shapes),
                             level_shapes=[list(s) for s in info.level_shapes], pixel_size_um=info.pixel_size_um,
                             magnification=magnification_of(info.pixel_size_um, magnifications), dtype=info.dtype)
    (Path(out_dir) / "summary.json").write_text(summary.to_json())
    return summary
