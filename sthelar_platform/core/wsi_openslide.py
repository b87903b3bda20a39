"""3DHISTECH MRXS scans read through OpenSlide (``openslide-bin``: no system library), behind the
whole-slide interface.

An MRXS scan is ``<name>.mrxs`` beside a folder ``<name>/`` holding ``Slidedat.ini``, ``Index.dat``
and the ``Data*.dat`` files; the ``.mrxs`` file alone is useless, so a missing or incomplete folder
is the first thing checked. OpenSlide places the camera images by their recorded positions and
returns RGBA; pixels no image covers (the scanner's padding) take the slide's background colour.
The pixel size is OpenSlide's ``openslide.mpp-x`` (``MICROMETER_PER_PIXEL_X`` of level 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sthelar_platform.core.errors import InputError
from sthelar_platform.core.wsi import SlideLevel, SlideReader, level_downsample

FIX_MRXS = ("copy the .mrxs file together with its folder of the same name (Slidedat.ini, Index.dat, Data*.dat), "
            "or export the slide as OME-TIFF with QuPath or bfconvert")
MRXS_FILES = ("Slidedat.ini", "Index.dat")


def check_mrxs_folder(path: Path) -> None:
    """The data folder beside an ``.mrxs`` file holds what OpenSlide needs; else an InputError naming it."""
    folder = path.with_suffix("")
    if not folder.is_dir():
        raise InputError(path, f"the MRXS data folder {folder.name}/ is missing beside the .mrxs file", FIX_MRXS)
    missing = [name for name in MRXS_FILES if not (folder / name).is_file()]
    if not missing and not any(folder.glob("Data*.dat")):
        missing = ["Data*.dat"]
    if missing:
        raise InputError(path, f"the MRXS data folder {folder.name}/ has no {', '.join(missing)}", FIX_MRXS)


class OpenSlideScan(SlideReader):
    """One scan OpenSlide opens (MRXS here): the same interface as :class:`~sthelar_platform.core.wsi.WholeSlide`."""

    axes = "YXS"
    dtype = "uint8"
    is_rgb = True
    all_levels_tiled = True

    def __init__(self, path: str | Path, verify: bool = True):
        """``verify`` is accepted for the interface: the data folder is always checked, images when decoded."""
        import openslide

        self.path = Path(path)
        check_mrxs_folder(self.path)
        try:
            self._slide: Any = openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideError, OSError) as exc:
            raise InputError(self.path, f"OpenSlide cannot open the scan ({type(exc).__name__}: {exc})",
                             FIX_MRXS) from exc
        props = self._slide.properties
        section = props.get("mirax.HIERARCHICAL.HIER_0_VAL_0_SECTION")
        self.compression = str(props.get(f"mirax.{section}.IMAGE_FORMAT", "unknown")) if section else "unknown"
        mpp = props.get("openslide.mpp-x")
        self.mpp = float(mpp) if mpp else None
        self.mpp_source = "OpenSlide mpp-x (Slidedat MICROMETER_PER_PIXEL_X)" if self.mpp else "none"
        background = str(props.get("openslide.background-color", "FFFFFF"))
        self._background = tuple(int(background[i : i + 2], 16) for i in (0, 2, 4))
        self._downsamples = [float(d) for d in self._slide.level_downsamples]
        self._dimensions = [(int(w), int(h)) for w, h in self._slide.level_dimensions]  # kept past close()

    @property
    def levels(self) -> list[SlideLevel]:
        w0, h0 = self._dimensions[0]
        return [SlideLevel(h, w, level_downsample((h0, w0), (h, w))) for w, h in self._dimensions]

    @property
    def level0_shape(self) -> tuple[int, ...]:
        return (self.height, self.width, 3)

    def read_region(self, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """One window of one level as ``(h, w, 3)``; uncovered pixels take the slide's background colour."""
        import openslide

        scale = self._downsamples[level]
        try:
            rgba = np.asarray(self._slide.read_region((round(x0 * scale), round(y0 * scale)), level, (w, h)))
        except (openslide.OpenSlideError, OSError) as exc:
            raise InputError(self.path, f"scan images cannot be decoded ({type(exc).__name__}: {exc}); a Data*.dat "
                             "file is damaged or truncated", FIX_MRXS) from exc
        alpha = rgba[..., 3:4].astype(np.float32) / 255.0  # openslide-python un-premultiplies OpenSlide's ARGB
        rgb = rgba[..., :3] * alpha + (1.0 - alpha) * np.asarray(self._background, np.float32)
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)

    def close(self) -> None:
        self._slide.close()
