"""Whole-slide images as scanners write them, read region by region through one small interface.

Opens the TIFF family on tifffile (the library tiffslide builds on): Aperio SVS, Hamamatsu NDPI,
OME-TIFF, generic tiled or stripped TIFF, single-level or pyramidal, with JPEG, JPEG 2000, LZW or
deflate tiles (imagecodecs). tiffslide itself refuses the SYX and singleton-axis layouts below, so
the axis handling is done here, once, at open time:

- axis orders ``YXS``, ``CYX``, ``SYX``, and any extra singleton axes (``1YXS``, ``TCZYXS`` with
  T = Z = 1) become ``(y, x, rgb)`` views; RGBA drops alpha;
- the pixel size is read from, in this order, the OME ``PhysicalSizeX``, the TIFF resolution tags
  (centimetre or inch; the 72 dpi default of non-microscopy writers is ignored), the Aperio
  description (``MPP = 0.2520``), the NDPI magnification tag; ``mpp_source`` says which.

Nothing reads a whole level unless asked to with :meth:`WholeSlide.read_level`, which refuses
levels above ``max_pixels``.

:class:`SlideReader` is what every format's reader offers (``core/wsi_dicom.py`` for DICOM WSI,
``core/wsi_openslide.py`` for MRXS);
``core/scans.py`` picks the reader for a scan as a lab has it. The platform's own pyramid is always
a TIFF and opens as :class:`WholeSlide`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
import tifffile
import zarr

from sthelar_platform.core.errors import InputError

FIX_FORMAT = ("export the scan as a tiled (OME-)TIFF or SVS (e.g. with QuPath or bfconvert); "
              "see docs/formats.md, scanners and formats")
PLAUSIBLE_MPP = (0.05, 20.0)  # µm/px of any light-microscopy scan; outside it a tag is not a pixel size
WHOLE_LEVEL_MAX_PIXELS = 64_000_000  # a whole-level read above this is refused (e.g. 8000 x 8000)


@dataclass(frozen=True)
class SlideLevel:
    height: int
    width: int
    downsample: float


class SlideReader(ABC):
    """What every stage needs of a scan, whatever its format (TIFF family, DICOM WSI, OpenSlide).

    A reader sets ``path``, ``axes``, ``dtype``, ``compression``, ``mpp`` and ``mpp_source`` when it
    opens, and gives its levels and region reads; whole-level reads and the context manager are shared.
    """

    path: Path
    axes: str
    dtype: str
    compression: str
    mpp: float | None
    mpp_source: str

    @property
    @abstractmethod
    def levels(self) -> list[SlideLevel]: ...

    @property
    @abstractmethod
    def level0_shape(self) -> tuple[int, ...]:
        """Level 0's shape in the file's own axis order (for messages)."""

    @property
    @abstractmethod
    def all_levels_tiled(self) -> bool: ...

    @property
    @abstractmethod
    def is_rgb(self) -> bool: ...

    @abstractmethod
    def read_region(self, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """One window of one level as ``(h, w, 3)`` (``(h, w)`` for a grayscale image); only touched tiles decode."""

    @abstractmethod
    def close(self) -> None: ...

    @property
    def height(self) -> int:
        return self.levels[0].height

    @property
    def width(self) -> int:
        return self.levels[0].width

    def read_level(self, level: int, max_pixels: int = WHOLE_LEVEL_MAX_PIXELS) -> np.ndarray:
        """A whole level, for thumbnails and masks; refuses one too large to hold."""
        lv = self.levels[level]
        if lv.height * lv.width > max_pixels:
            raise InputError(self.path, f"level {level} is {lv.width} x {lv.height} px, too large to read whole",
                             "ingest the H&E first: the platform's own pyramid has small levels for this")
        return self.read_region(level, 0, 0, lv.height, lv.width)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ome_mpp(tf: tifffile.TiffFile) -> float | None:
    if not (tf.is_ome and tf.ome_metadata):
        return None
    m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tf.ome_metadata)
    if not m:
        return None
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tf.ome_metadata)
    scale = {"nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}.get(unit.group(1) if unit else "µm", 1.0)
    return float(m.group(1)) * scale


def _tag_mpp(page: tifffile.TiffPage) -> float | None:
    tag, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
    if tag is None or unit is None or not tag.value[0]:
        return None
    per_unit = tag.value[0] / tag.value[1]
    return {3: 1e4, 2: 25400.0}.get(int(unit.value), 0.0) / per_unit or None


def _aperio_mpp(page: tifffile.TiffPage) -> float | None:
    m = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", page.description or "")
    return float(m.group(1)) if m else None


def _ndpi_mpp(tf: tifffile.TiffFile) -> float | None:
    if not tf.is_ndpi:
        return None
    mag = (tf.pages.first.ndpi_tags or {}).get("Magnification")
    return 10.0 / float(mag) if mag else None  # Hamamatsu: 40x = 0.25 µm/px nominal


def check_tile_data_present(path: str | Path) -> None:
    """Every tile or strip of every level lies inside the file: a truncated copy is caught without decoding."""
    path = Path(path)
    size = path.stat().st_size
    with tifffile.TiffFile(path, is_ome=False) as tf:  # this file's own pages (an OME series may span files)
        for level in tf.series[0].levels:
            for page in level.pages:
                if page is None or not hasattr(page, "dataoffsets"):
                    continue
                ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=True) if n]
                if ends and max(ends) > size:
                    raise InputError(path, f"truncated: image data runs to byte {max(ends)} but the file has {size} "
                                     "bytes", "copy the file again completely (compare its size with the source)")


def _plausible(value: float | None) -> float | None:
    return value if value is not None and PLAUSIBLE_MPP[0] <= value <= PLAUSIBLE_MPP[1] else None


def _page(page: tifffile.TiffPage | tifffile.TiffFrame | None, path: Path) -> tifffile.TiffPage:
    """A level's first page with its tags (tifffile may hand back a frame that has none)."""
    key = page if isinstance(page, tifffile.TiffPage) or page is None else page.keyframe
    if key is None:
        raise InputError(path, "a pyramid level has no pages", FIX_FORMAT)
    return key


def level_downsample(shape0: tuple[int, ...], shape: tuple[int, ...]) -> float:
    """Level-0 pixels per pixel of a level of shape ``shape``.

    A level made by halving k times is 2**k, whether the halving rounded odd sizes up or down: its
    pixel ``i`` covers level-0 pixels ``[i * 2**k, (i + 1) * 2**k)``. The plain size ratio of an odd
    size (1935 / 968) would drift by up to half a level pixel across the slide.
    """
    h0, w0 = shape0
    h, w = shape
    if not h or not w:
        return 1.0
    power = 2.0 ** round(np.log2(w0 / w))
    if all(int(np.floor(n0 / power)) <= n <= int(np.ceil(n0 / power)) for n0, n in ((h0, h), (w0, w))):
        return power
    return h0 / h


class WholeSlide(SlideReader):
    """One scan: its levels, pixel size and region reads as ``(h, w, 3)`` uint8 RGB."""

    def __init__(self, path: str | Path, verify: bool = True):
        """``verify``: check that no tile lies past the end of the file (once per stage, not per region read)."""
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(self.path, "image file does not exist", "check the path in the slide manifest")
        try:
            self._tf = tifffile.TiffFile(self.path)
            series = self._tf.series[0]
            self.axes = series.axes
            self._level_shapes = [tuple(lv.shape) for lv in series.levels]
            self.dtype = str(series.dtype)
            first = _page(series.pages[0], self.path)
            self.tiled = bool(first.is_tiled)
            self.compression = str(getattr(first.compression, "name", first.compression))
        except (tifffile.TiffFileError, ValueError, IndexError, OSError, KeyError) as exc:
            raise InputError(self.path, f"not a readable TIFF-family whole-slide image ({exc})", FIX_FORMAT) from exc
        try:
            if verify:
                check_tile_data_present(self.path)  # a truncated copy stops here, with its name
            self._y, self._x, self._channel, self._fixed = self._axis_plan(self.axes, self._level_shapes[0])
            self.mpp, self.mpp_source = self._pixel_size()
        except BaseException:
            self._tf.close()
            raise

    def _axis_plan(self, axes: str, shape: tuple[int, ...]) -> tuple[int, int, int | None, dict[int, int]]:
        """Positions of Y, X and the colour axis; every other axis must be a singleton (indexed at 0)."""
        if "Y" not in axes or "X" not in axes:
            raise InputError(self.path, f"image axes {axes!r} have no Y and X", FIX_FORMAT)
        channel, fixed = None, {}
        for i, (a, n) in enumerate(zip(axes, shape, strict=True)):
            if a in "YX":
                continue
            if a in "SC" and n in (3, 4) and channel is None:
                channel = i
            elif n == 1:
                fixed[i] = 0
            else:
                raise InputError(self.path, f"image has {n} planes along axis {a!r} (axes {axes}, shape {shape}); an "
                                 "H&E scan is one RGB plane", FIX_FORMAT)
        return axes.index("Y"), axes.index("X"), channel, fixed

    def _pixel_size(self) -> tuple[float | None, str]:
        page = self._tf.pages.first
        for source, value in (("OME PhysicalSizeX", _ome_mpp(self._tf)), ("TIFF resolution tags", _tag_mpp(page)),
                              ("Aperio description", _aperio_mpp(page)), ("NDPI magnification", _ndpi_mpp(self._tf))):
            plausible = _plausible(value)
            if plausible is not None:
                return float(plausible), source
        return None, "none"

    # -- geometry ------------------------------------------------------------------
    @property
    def levels(self) -> list[SlideLevel]:
        h0, w0 = self._level_shapes[0][self._y], self._level_shapes[0][self._x]
        return [SlideLevel(int(s[self._y]), int(s[self._x]), level_downsample((h0, w0), (s[self._y], s[self._x])))
                for s in self._level_shapes]

    @property
    def level0_shape(self) -> tuple[int, ...]:
        return self._level_shapes[0]

    @property
    def all_levels_tiled(self) -> bool:
        return all(_page(lv.pages[0], self.path).is_tiled for lv in self._tf.series[0].levels)

    @property
    def is_rgb(self) -> bool:
        return self._channel is not None

    # -- pixels --------------------------------------------------------------------
    def read_region(self, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """One window of one level as ``(h, w, 3)`` (or ``(h, w)`` for a grayscale image); only touched tiles decode."""
        store = self._tf.series[0].aszarr(level=level)
        try:
            arr = zarr.open_array(store, mode="r")
            index: list[slice | int] = [slice(None)] * arr.ndim
            index[self._y], index[self._x] = slice(y0, y0 + h), slice(x0, x0 + w)
            for i, v in self._fixed.items():
                index[i] = v
            block = np.asarray(arr[tuple(index)])
        except Exception as exc:  # noqa: BLE001 - codecs raise their own types for damaged tiles
            raise InputError(self.path, f"image tiles cannot be decoded ({type(exc).__name__}: {exc}); the file is "
                             "damaged or truncated", "re-copy the image from its source") from exc
        finally:
            store.close()
        kept = [i for i in range(len(self.axes)) if i not in self._fixed]
        order = [kept.index(self._y), kept.index(self._x)] + ([kept.index(self._channel)] if self._channel is not None else [])
        block = block.transpose(order)
        return block[..., :3] if self.is_rgb else block

    def close(self) -> None:
        self._tf.close()
