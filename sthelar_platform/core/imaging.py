"""Tiled pyramidal OME-TIFF writing and lazy reading, tile by tile.

Writers take a ``render(level, y0, x0, h, w)`` callable and never hold a whole level
in memory; readers go through tifffile's zarr view so level 0 is never loaded whole.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import zarr

from sthelar_platform.core.errors import InputError
from sthelar_platform.core.wsi import SlideReader, WholeSlide, level_downsample

TILE = 512
RenderFn = Callable[[int, int, int, int, int], np.ndarray]


def pyramid_shapes(height: int, width: int, min_size: int = 256) -> list[tuple[int, int]]:
    """Level shapes halving from full size until the next level would be under ``min_size``."""
    shapes = [(height, width)]
    while max(shapes[-1]) // 2 >= min_size:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def _tiles(render: RenderFn, level: int, shape: tuple[int, int], channels: int | None, dtype, workers: int) -> Iterator[np.ndarray]:
    h, w = shape
    coords = [(y, x) for y in range(0, h, TILE) for x in range(0, w, TILE)]

    def one(yx: tuple[int, int]) -> np.ndarray:
        y, x = yx
        th, tw = min(TILE, h - y), min(TILE, w - x)
        tile = render(level, y, x, th, tw)
        if (th, tw) != (TILE, TILE):  # tifffile wants full tiles; pad the border ones
            full = np.zeros((TILE, TILE) + (() if channels is None else (channels,)), dtype)
            full[:th, :tw] = tile
            tile = full
        return tile.astype(dtype, copy=False)

    with ThreadPoolExecutor(workers) as pool:
        # Bounded look-ahead keeps memory flat for any image size.
        batch = 4 * workers
        for i in range(0, len(coords), batch):
            yield from pool.map(one, coords[i : i + batch])


def write_pyramidal_ome_tiff(path: str | Path, shape: tuple[int, int], render: RenderFn, *, dtype, channels: int | None,
                             pixel_size_um: float, channel_names: list[str] | None = None, workers: int = 2,
                             progress: Callable[[int], None] | None = None) -> list[tuple[int, int]]:
    """Write a tiled pyramid; level k is rendered at 2**k downsampling. Returns the level shapes."""
    shapes = pyramid_shapes(*shape)
    rgb = channels == 3
    axes = "YXS" if rgb else "YX"
    meta = {"axes": axes, "PhysicalSizeX": pixel_size_um, "PhysicalSizeY": pixel_size_um,
            "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}
    if channel_names:
        meta["Channel"] = {"Name": channel_names}
    common = dict(tile=(TILE, TILE), dtype=dtype, photometric="rgb" if rgb else "minisblack",
                  compression="zlib", compressionargs={"level": 1}, maxworkers=workers)
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        for level, lshape in enumerate(shapes):
            full = lshape + ((channels,) if channels else ())
            scale = 2**level
            res = 1e4 / (pixel_size_um * scale)
            tif.write(
                _tiles(render, level, lshape, channels, dtype, workers), shape=full,
                subifds=len(shapes) - 1 if level == 0 else None, subfiletype=0 if level == 0 else 1,
                metadata=meta if level == 0 else None, resolution=(res, res), resolutionunit="CENTIMETER", **common,
            )
            if progress:
                progress(level)
    return shapes


def write_tiled_tiff(path: str | Path, shape: tuple[int, int], render: RenderFn, *, workers: int = 2) -> None:
    """One RGB level as a tiled TIFF, rendered tile by tile (scratch levels of a pyramid being built)."""
    tifffile.imwrite(path, _tiles(render, 0, shape, 3, np.uint8, workers), shape=(*shape, 3), dtype=np.uint8,
                     tile=(TILE, TILE), photometric="rgb", compression="zlib", compressionargs={"level": 1},
                     bigtiff=True, maxworkers=workers)


def _halve(read: Callable[[int, int, int, int], np.ndarray], shape: tuple[int, int]):
    """A render function for the next level: 2x2 area averages of the level read by ``read``."""
    ph, pw = shape

    def render(_level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        y1, x1 = min(2 * (y0 + h), ph), min(2 * (x0 + w), pw)
        block = read(2 * y0, 2 * x0, y1 - 2 * y0, x1 - 2 * x0).astype(np.float32)
        if block.shape[0] < 2 * h or block.shape[1] < 2 * w:  # odd border: repeat the last row / column
            block = np.pad(block, ((0, 2 * h - block.shape[0]), (0, 2 * w - block.shape[1]), (0, 0)), mode="edge")
        return (block.reshape(h, 2, w, 2, 3).mean(axis=(1, 3)) + 0.5).astype(np.uint8)

    return render


def write_averaged_pyramid(slide: SlideReader, dst: Path, pixel_size_um: float, workers: int = 2,
                           progress: Callable[[str], None] | None = None) -> list[tuple[int, int]]:
    """Stream ``slide``'s level 0 into a 2x pyramid at ``dst`` (the platform's H&E format); returns its
    level shapes.

    Level k is averaged from level k-1, which is kept in a temporary single-level tiled TIFF beside
    ``dst`` (removed at the end), so the source's level 0 is decoded twice in all, region by region.
    """
    shapes = pyramid_shapes(slide.height, slide.width)
    readers: list[Callable[[int, int, int, int], np.ndarray]] = [functools.partial(slide.read_region, 0)]
    temps: list[WholeSlide] = []
    scratch = dst.with_name(dst.name + ".levels")
    scratch.mkdir(exist_ok=True)
    try:
        for k in range(1, len(shapes)):
            path = scratch / f"level{k}.tif"
            write_tiled_tiff(path, shapes[k], _halve(readers[k - 1], shapes[k - 1]), workers=workers)
            temps.append(WholeSlide(path))
            readers.append(functools.partial(temps[-1].read_region, 0))
            if progress:
                progress(f"level {k} of {len(shapes) - 1} averaged")
        write_pyramidal_ome_tiff(dst, shapes[0], lambda level, y, x, h, w: readers[level](y, x, h, w),
                                 dtype=np.uint8, channels=3, pixel_size_um=pixel_size_um, workers=workers)
    finally:
        for t in temps:
            t.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return shapes


@dataclass(frozen=True)
class PyramidInfo:
    path: Path
    level_shapes: list[tuple[int, ...]]
    dtype: str
    pixel_size_um: float | None
    axes: str

    @property
    def height(self) -> int:
        return int(self.level_shapes[0][0])

    @property
    def width(self) -> int:
        return int(self.level_shapes[0][1])

    def downsample(self, level: int) -> float:
        """Level-0 pixels per pixel of ``level`` (2**k for a halving pyramid, odd sizes included)."""
        return level_downsample(self.level_shapes[0][:2], self.level_shapes[level][:2])


def open_pyramid(path: str | Path) -> PyramidInfo:
    """Inspect an image (through the whole-slide layer) without reading pixel data; a truncated file is refused."""
    with WholeSlide(path) as slide:
        shapes = [(lv.height, lv.width) + ((3,) if slide.is_rgb else ()) for lv in slide.levels]
        return PyramidInfo(path=Path(path), level_shapes=shapes, dtype=slide.dtype, pixel_size_um=slide.mpp,
                           axes="YXS" if slide.is_rgb else "YX")


def read_level_region(path: str | Path, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Read one window of one pyramid level lazily (only the tiles it touches), as ``(h, w, 3)``.

    Called once per region on hot paths: the file was verified when the stage opened it (``open_pyramid``).
    """
    with WholeSlide(path, verify=False) as slide:
        return slide.read_region(level, y0, x0, h, w)


def read_level(path: str | Path, level: int) -> np.ndarray:
    """Read a whole (small, low-resolution) level; refused when it is too large to hold."""
    with WholeSlide(path, verify=False) as slide:
        return slide.read_level(level)


def first_plane_thumbnail(path: str | Path, max_px: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A preview of an image's first plane (e.g. the DAPI channel) at most ~``max_px`` per side, without
    reading full resolution: the smallest pyramid level that is large enough, read with a stride.

    The file is read as a plain TIFF (its own pages and SubIFD levels): a multi-file OME series, such
    as XOA 2's four ``morphology_focus_000N.ome.tif``, has no pyramid as an OME series.
    Returns the preview and the file's level shapes (first plane).
    """
    path = Path(path)
    try:
        with tifffile.TiffFile(path, is_ome=False) as tf:
            levels = tf.series[0].levels
            shapes = [tuple(lv.shape) for lv in levels]
            axes = tf.series[0].axes
            yx = [axes.index("Y"), axes.index("X")]
    except (tifffile.TiffFileError, ValueError, IndexError, OSError) as exc:
        raise InputError(path, f"not a readable TIFF image ({exc})", "re-copy the morphology image from the Xenium output") from exc
    sizes = [max(s[yx[0]], s[yx[1]]) for s in shapes]
    level = next((i for i in range(len(sizes) - 1, -1, -1) if sizes[i] >= max_px), 0)
    step = max(1, sizes[level] // max_px)
    store = tifffile.imread(path, aszarr=True, level=level, is_ome=False)
    try:
        arr = zarr.open_array(store, mode="r")
        index = tuple(slice(None, None, step) if i in yx else 0 for i in range(arr.ndim))
        preview = np.asarray(arr[index])
    except Exception as exc:  # noqa: BLE001 - codecs raise their own types for damaged tiles
        raise InputError(path, f"image tiles cannot be decoded ({type(exc).__name__}: {exc}); the file is damaged or "
                         "truncated", "re-copy the image from its source") from exc
    finally:
        store.close()
    plane_shapes = [(s[yx[0]], s[yx[1]]) for s in shapes]
    return preview, plane_shapes


def thumbnail_level(info: PyramidInfo, max_px: int) -> int:
    """Index of the first level whose longest side is at most ``max_px`` (or the smallest level)."""
    for i, shape in enumerate(info.level_shapes):
        if max(shape[0], shape[1]) <= max_px:
            return i
    return len(info.level_shapes) - 1
