"""A 3DHISTECH MRXS (MIRAX) slide written from the layout OpenSlide documents (openslide.org/formats/mirax).

``<name>.mrxs`` is a small stub beside the folder ``<name>/`` that holds:

- ``Slidedat.ini``: ``[GENERAL]`` (slide id, the level-0 image grid ``IMAGENUMBER_X/Y``,
  ``CameraImageDivisionsPerSide``), ``[HIERARCHICAL]`` (the ``Slide zoom level`` hierarchy with one
  section per level, the ``VIMSLIDE_POSITION_BUFFER`` non-hierarchical record, the index file name),
  ``[DATAFILE]`` and one ``LAYER_0_LEVEL_<k>_SECTION`` per level (image size, overlap, µm/px, JPEG,
  fill colour, concatenation exponent);
- ``Index.dat``: the version ``01.02`` and the slide id, then little-endian int32 pointers: the
  hierarchical and non-hierarchical root tables, one record per level whose linked data pages list
  (image index, offset, length, file) of every JPEG, and the position record;
- ``Data0000.dat``: the JPEG images back to back, then the camera position buffer (9 bytes per camera
  position: a flag byte and the level-0 x, y as int32).

Level 0 is cut into ``tile`` px images on a grid padded (with the fill colour, as a scanner's grid
is) to whole camera positions of ``divisions`` x ``divisions`` images; level k's images each
concatenate 2^k x 2^k level-0 images downsampled 2^k times, as MIRAX scanners build them. There is
no overlap between camera positions: the position buffer places every photo on the exact grid.
"""

from __future__ import annotations

import io
import struct
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

FILL_BGR = 0xFFFFFF  # white, the scanner's background


def _area_mean(block: np.ndarray, f: int) -> np.ndarray:
    h, w = block.shape[0] // f, block.shape[1] // f
    return block[: h * f, : w * f].reshape(h, f, w, f, 3).mean(axis=(1, 3)).round().astype(np.uint8)


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _slidedat(slide_id: str, images_x: int, images_y: int, divisions: int, levels: int, tile: int,
              mpp: float) -> str:
    lines = ["[GENERAL]", "SLIDE_VERSION = 01.03", f"SLIDE_ID = {slide_id}", "SLIDE_NAME = synthetic",
             f"IMAGENUMBER_X = {images_x}", f"IMAGENUMBER_Y = {images_y}", "OBJECTIVE_MAGNIFICATION = 40",
             f"CameraImageDivisionsPerSide = {divisions}", "", "[HIERARCHICAL]", "HIER_COUNT = 1",
             "NONHIER_COUNT = 1", "INDEXFILE = Index.dat", "HIER_0_NAME = Slide zoom level",
             f"HIER_0_COUNT = {levels}"]
    for k in range(levels):
        lines += [f"HIER_0_VAL_{k} = ZoomLevel_{k}", f"HIER_0_VAL_{k}_SECTION = LAYER_0_LEVEL_{k}_SECTION"]
    lines += ["NONHIER_0_NAME = VIMSLIDE_POSITION_BUFFER", "NONHIER_0_COUNT = 1", "NONHIER_0_VAL_0 = default",
              "NONHIER_0_VAL_0_SECTION = NONHIER_0_VAL_0_SECTION", "", "[DATAFILE]", "FILE_COUNT = 1",
              "FILE_0 = Data0000.dat", ""]
    for k in range(levels):
        lines += [f"[LAYER_0_LEVEL_{k}_SECTION]", "OVERLAP_X = 0", "OVERLAP_Y = 0",
                  f"MICROMETER_PER_PIXEL_X = {mpp * 2**k:.6f}", f"MICROMETER_PER_PIXEL_Y = {mpp * 2**k:.6f}",
                  "IMAGE_FORMAT = JPEG", f"IMAGE_FILL_COLOR_BGR = {FILL_BGR}", f"DIGITIZER_WIDTH = {tile}",
                  f"DIGITIZER_HEIGHT = {tile}", f"IMAGE_CONCAT_FACTOR = {0 if k == 0 else 1}", ""]
    lines += ["[NONHIER_0_VAL_0_SECTION]", "", ""]
    return "\r\n".join(lines)


class _Index:
    """Index.dat built front to back; pointers are absolute byte offsets in the file."""

    def __init__(self, head: bytes):
        self.data = bytearray(head)

    def here(self) -> int:
        return len(self.data)

    def ints(self, *values: int) -> int:
        at = self.here()
        self.data += struct.pack(f"<{len(values)}i", *values)
        return at

    def patch(self, at: int, value: int) -> None:
        self.data[at : at + 4] = struct.pack("<i", value)


def write_mrxs(rgb: np.ndarray, path: Path, mpp: float, tile: int = 256, divisions: int = 2,
               quality: int = 90) -> Path:
    """Write ``rgb`` (level 0, ``mpp`` µm/px) as ``path`` (``.mrxs``) and its data folder; returns ``path``."""
    folder = path.with_suffix("")
    folder.mkdir(parents=True, exist_ok=False)
    h, w = rgb.shape[:2]
    step = tile * divisions  # one camera position
    images_x, images_y = -(-w // step) * divisions, -(-h // step) * divisions
    grid = np.full((images_y * tile, images_x * tile, 3), 255, np.uint8)
    grid[:h, :w] = rgb
    levels = 1
    while tile * 2 ** (levels - 1) < max(images_x, images_y) * tile:
        levels += 1

    data = bytearray()
    entries: list[list[tuple[int, int, int, int]]] = []
    for k in range(levels):
        f = 2**k
        level_entries = []
        for y in range(0, images_y, f):
            for x in range(0, images_x, f):
                block = np.full((f * tile, f * tile, 3), 255, np.uint8)
                src = grid[y * tile : (y + f) * tile, x * tile : (x + f) * tile]
                block[: src.shape[0], : src.shape[1]] = src
                jpeg = _jpeg(_area_mean(block, f) if f > 1 else block, quality)
                level_entries.append((y * images_x + x, len(data), len(jpeg), 0))
                data += jpeg
        entries.append(level_entries)
    positions = bytearray()
    for py in range(images_y // divisions):
        for px in range(images_x // divisions):
            positions += struct.pack("<bii", 1, px * step, py * step)
    positions_at = len(data)
    data += positions

    slide_id = uuid.uuid4().hex
    index = _Index(b"01.02" + slide_id.encode())
    hier_root, nonhier_root = index.ints(0), index.ints(0)
    index.patch(hier_root, index.here())
    table = [index.ints(0) for _ in range(levels)]
    # records: [0, pointer to the first data page]; the data page: [count, next = 0, items...]
    for k, level_entries in enumerate(entries):
        record = index.ints(0, 0)
        index.patch(table[k], record)
        page = index.ints(len(level_entries), 0)
        for entry in level_entries:
            index.ints(*entry)
        index.patch(record + 4, page)
    index.patch(nonhier_root, index.here())
    nonhier_table = index.ints(0)
    record = index.ints(0, 0)
    index.patch(nonhier_table, record)
    page = index.ints(1, 0, 0, 0, positions_at, len(positions), 0)
    index.patch(record + 4, page)

    (folder / "Slidedat.ini").write_text(_slidedat(slide_id, images_x, images_y, divisions, levels, tile, mpp))
    (folder / "Index.dat").write_bytes(bytes(index.data))
    (folder / "Data0000.dat").write_bytes(bytes(data))
    path.write_bytes(b"3DHISTECH MRXS synthetic slide\r\n")  # the .mrxs stub: OpenSlide needs it to exist, not a TIFF
    return path
