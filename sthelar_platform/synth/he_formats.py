"""The same H&E rewritten as scanners and converters write it, for tests of the whole-slide layer.

Each variant follows its vendor's documented layout as tifffile and openslide read it:

- ``ome_cyx``: OME-TIFF with channels first (three planes), one of the layouts 10x ships;
- ``ome_1yxs``: OME-TIFF with a leading singleton time axis (``TYXS``, T = 1);
- ``single_level``: a generic tiled TIFF, one level, pixel size in the resolution tags (cm);
- ``svs``: Aperio SVS: tiled JPEG level 0 whose ImageDescription starts ``Aperio Image Library``
  and carries ``|MPP = …|AppMag = …``; a stripped thumbnail as the second page; 4x-step levels;
  label and macro images last;
- ``ndpi``: NDPI-style tags: one JPEG page per level with the Hamamatsu private tags (65420 file
  format, 65421 magnification, 65422/65423 offsets from the slide centre), Make/Model, resolution
  tags in centimetres. The container is classic TIFF (``.tif``): a true ``.ndpi`` uses Hamamatsu's
  64-bit offset extension, which tifffile's NDPI parser reads but no writer here produces;
- ``no_pixel_size``: a tiled TIFF with no pixel size anywhere;
- ``scan_20x``: the slide scanned at 20x only (2x area-averaged), OME pyramid;
- ``jpeg_tiles``: the platform's own 2x OME pyramid layout, but JPEG-compressed tiles;
- ``corrupt_tile``: a single-level tiled TIFF with one tile's bytes overwritten;
- ``dicom``: a DICOM WSI series folder (Supplement 145: VL Whole Slide Microscopy Image instances,
  ``TILED_FULL``, one instance per level, label and overview instances) made from the ``svs``
  variant by wsidicomizer, which copies the SVS's JPEG tiles into the frames unchanged;
- ``dicom_jpeg2000``: the same series transcoded to lossless JPEG 2000 frames;
- ``mrxs``: a 3DHISTECH MRXS slide (``.mrxs`` beside its data folder) written from OpenSlide's
  documentation of the format (``_mrxs.py``): JPEG camera images, 2x concatenated levels, a position
  buffer; the level-0 grid padded to whole camera positions with white, as a scanner pads it.

The DICOM variants run wsidicomizer as a separate program (``$STHELAR_WSIDICOMIZER``, else
``wsidicomizer`` on the PATH): it pins an older wsidicom than the one the platform reads with, so
it lives in its own environment (``make wsidicomizer``), and the files it writes are read by a
different wsidicom release than the one that wrote them, as a lab's archive would be.

Everything is written from the source's level 0 read whole, so use it on small test slides only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import tifffile

from sthelar_platform.core.imaging import pyramid_shapes
from sthelar_platform.core.wsi import WholeSlide
from sthelar_platform.synth._mrxs import write_mrxs

VARIANTS = ("ome_cyx", "ome_1yxs", "single_level", "svs", "ndpi", "no_pixel_size", "scan_20x", "jpeg_tiles",
            "corrupt_tile", "dicom", "dicom_jpeg2000", "mrxs")
SUFFIX = {"svs": ".svs", "ndpi": "_style.tif", "dicom": "", "dicom_jpeg2000": "", "mrxs": ".mrxs"}  # DICOM: a folder
TILE = 256
JPEG_QUALITY = 90  # Aperio scanners write Q=70-90; the description below says so


def _downsample(rgb: np.ndarray, f: int) -> np.ndarray:
    h, w = rgb.shape[0] // f * f, rgb.shape[1] // f * f
    return rgb[:h, :w].reshape(h // f, f, w // f, f, 3).mean(axis=(1, 3)).round().astype(np.uint8)


def _res(mpp: float) -> dict:
    return {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}


def _ome(path: Path, levels: list[np.ndarray], mpp: float, compression: str) -> None:
    meta = {"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp, "PhysicalSizeXUnit": "µm",
            "PhysicalSizeYUnit": "µm"}
    with tifffile.TiffWriter(path, ome=True) as tw:
        for k, lv in enumerate(levels):
            tw.write(lv, photometric="rgb", tile=(TILE, TILE), compression=compression,
                     compressionargs={"level": JPEG_QUALITY} if compression == "jpeg" else None,
                     subifds=len(levels) - 1 if k == 0 else None, subfiletype=1 if k else 0,
                     metadata=meta if k == 0 else None, **_res(mpp * 2**k))


def _aperio_description(w: int, h: int, mpp: float, extra: str = "") -> str:
    return (f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] ({TILE}x{TILE}) JPEG/RGB Q={JPEG_QUALITY}{extra}"
            f"|AppMag = 40|StripeWidth = 2040|ScanScope ID = SS0000|Filename = synthetic|Date = 12/01/26"
            f"|Time = 08:00:00|MPP = {mpp:.4f}|Left = 25.0|Top = 18.0")


def _svs(path: Path, rgb: np.ndarray, mpp: float) -> None:
    h, w = rgb.shape[:2]
    with tifffile.TiffWriter(path, bigtiff=False) as tw:  # metadata=None: no tifffile "shaped" description
        tw.write(rgb, photometric="rgb", tile=(TILE, TILE), compression="jpeg", compressionargs={"level": JPEG_QUALITY},
                 description=_aperio_description(w, h, mpp), metadata=None)
        thumb = _downsample(rgb, 8)
        tw.write(thumb, photometric="rgb", compression="jpeg", compressionargs={"level": JPEG_QUALITY}, metadata=None,
                 description=_aperio_description(w, h, mpp, f" -> {thumb.shape[1]}x{thumb.shape[0]} - "))
        for f in (4, 16):
            lv = _downsample(rgb, f)
            if min(lv.shape[:2]) < 64:
                break
            tw.write(lv, photometric="rgb", tile=(TILE, TILE), compression="jpeg", compressionargs={"level": JPEG_QUALITY},
                     metadata=None, description=_aperio_description(w, h, mpp, f" -> {lv.shape[1]}x{lv.shape[0]} - "))
        tw.write(np.full((120, 120, 3), 200, np.uint8), photometric="rgb", compression="lzw", subfiletype=1,
                 metadata=None, description="Aperio Image Library v12.0.15 \r\nlabel 120x120")
        tw.write(_downsample(rgb, 16), photometric="rgb", compression="jpeg", compressionargs={"level": JPEG_QUALITY},
                 subfiletype=9, metadata=None, description="Aperio Image Library v12.0.15 \r\nmacro")


def _ndpi(path: Path, rgb: np.ndarray, mpp: float) -> None:
    with tifffile.TiffWriter(path) as tw:
        for f in (1, 4, 16):
            lv = rgb if f == 1 else _downsample(rgb, f)
            tags = [(65420, "I", 1, 1, True), (65421, "f", 1, 40.0, True), (65422, "i", 1, 0, True),
                    (65423, "i", 1, 0, True), (271, "s", 0, "Hamamatsu", True), (272, "s", 0, "NanoZoomer", True)]
            tw.write(lv, photometric="rgb", tile=(TILE, TILE), compression="jpeg", compressionargs={"level": JPEG_QUALITY},
                     extratags=tags, metadata=None, **_res(mpp * f))


def wsidicomizer_command() -> str:
    """The wsidicomizer program: ``$STHELAR_WSIDICOMIZER``, else the one on the PATH."""
    found = os.environ.get("STHELAR_WSIDICOMIZER") or shutil.which("wsidicomizer")
    if not found or not Path(found).exists():
        raise FileNotFoundError("wsidicomizer not found: run `make wsidicomizer` (its own environment, "
                                ".venv-wsidicomizer/) or set STHELAR_WSIDICOMIZER to its path")
    return found


def _dicom(path: Path, rgb_source: str | Path, jpeg2000: bool) -> None:
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        svs = write_he_variant(rgb_source, scratch, "svs")
        extra = ["--format", "jpeg2000", "--quality", "0", "--force-transcoding"] if jpeg2000 else []  # quality < 1: lossless
        done = subprocess.run([wsidicomizer_command(), "-i", str(svs), "-o", str(path), "--workers", "1", *extra],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"wsidicomizer failed on {svs}: {done.stderr.strip()[-2000:]}")


def write_he_variant(src: str | Path, dst_dir: str | Path, variant: str) -> Path:
    """Write ``src``'s H&E as ``variant`` into ``dst_dir``; returns the new file (a folder for DICOM)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown H&E variant {variant!r}; known: {', '.join(VARIANTS)}")
    if variant.startswith("dicom"):
        dst = Path(dst_dir) / f"he_{variant}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        _dicom(dst, src, jpeg2000=variant == "dicom_jpeg2000")
        return dst
    with WholeSlide(src) as slide:
        rgb = slide.read_region(0, 0, 0, slide.height, slide.width)
        mpp = float(slide.mpp or 0.25)
    dst = Path(dst_dir) / f"he_{variant}{SUFFIX.get(variant, '.ome.tif' if variant.startswith(('ome', 'scan', 'jpeg')) else '.tif')}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    if variant == "ome_cyx":
        tifffile.imwrite(dst, np.ascontiguousarray(rgb.transpose(2, 0, 1)), ome=True, tile=(TILE, TILE),
                         compression="zlib", metadata={"axes": "CYX", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp})
    elif variant == "ome_1yxs":
        tifffile.imwrite(dst, rgb[None], ome=True, photometric="rgb", tile=(TILE, TILE), compression="zlib",
                         metadata={"axes": "TYXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp})
    elif variant == "single_level":
        tifffile.imwrite(dst, rgb, photometric="rgb", tile=(TILE, TILE), compression="lzw", **_res(mpp))
    elif variant == "svs":
        _svs(dst, rgb, mpp)
    elif variant == "ndpi":
        _ndpi(dst, rgb, mpp)
    elif variant == "mrxs":
        write_mrxs(rgb, dst, mpp, quality=JPEG_QUALITY)
    elif variant == "no_pixel_size":
        tifffile.imwrite(dst, rgb, photometric="rgb", tile=(TILE, TILE), compression="zlib")
    elif variant == "scan_20x":
        low = _downsample(rgb, 2)
        levels = [low] + [_downsample(low, 2**k) for k in range(1, len(pyramid_shapes(*low.shape[:2])))]
        _ome(dst, levels, mpp * 2, "zlib")
    elif variant == "jpeg_tiles":
        levels = [rgb] + [_downsample(rgb, 2**k) for k in range(1, len(pyramid_shapes(*rgb.shape[:2])))]
        _ome(dst, levels, mpp, "jpeg")
    else:  # corrupt_tile
        tifffile.imwrite(dst, rgb, photometric="rgb", tile=(TILE, TILE), compression="zlib", **_res(mpp))
        with tifffile.TiffFile(dst) as tf:
            page = tf.pages.first
            offset, count = page.dataoffsets[5], page.databytecounts[5]
        with open(dst, "r+b") as fh:
            fh.seek(offset)
            fh.write(bytes(range(256)) * (count // 256) + b"\x00" * (count % 256))
    return dst
