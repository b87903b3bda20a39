"""Slide ids and Xenium cell ids.

Slide ids become path components and SQL values, so they are validated before
use. Xenium cell ids (``aaaachba-1``) encode a uint32 prefix as 8 base-16 letters
(a = 0 ... p = 15); masks store ``prefix + 1`` so that 0 stays background.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from sthelar_platform.core.errors import InputError

SLIDE_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
MAX_SLIDE_ID_LENGTH = 64
RESERVED_SLIDE_IDS = frozenset({"dataset"})  # exports/dataset/ holds the cross-slide training dataset
_SHIFTS = np.array([28, 24, 20, 16, 12, 8, 4, 0], dtype=np.uint32)


def validate_slide_id(slide_id: str, source: str | Path = "the slide catalog (catalog.yaml)") -> str:
    """Return ``slide_id`` unchanged when it is safe as a path component and partition key; ``source`` is where
    the id was read (a manifest, a landing folder), named in the error.
    """
    if not isinstance(slide_id, str) or not SLIDE_ID_PATTERN.match(slide_id) or len(slide_id) > MAX_SLIDE_ID_LENGTH:
        raise InputError(
            source,
            f"invalid slide id {slide_id!r} (must match {SLIDE_ID_PATTERN.pattern}, at most {MAX_SLIDE_ID_LENGTH} chars)",
            "use lower-case letters, digits, '_' and '-' only, starting with a letter or digit, e.g. 'breast_s01'",
        )
    if slide_id in RESERVED_SLIDE_IDS:
        raise InputError(source, f"slide id {slide_id!r} is reserved (exports/{slide_id}/ is a platform folder)",
                         "rename the slide, e.g. to 'dataset_s01'")
    return slide_id


def encode_cell_ids(prefix: np.ndarray, suffix: int | np.ndarray = 1) -> np.ndarray:
    """uint32 prefixes (and dataset suffixes) to Xenium string ids, vectorized."""
    prefix = np.asarray(prefix, dtype=np.uint32)
    nibbles = (prefix[:, None] >> _SHIFTS) & 0xF
    letters = (nibbles + ord("a")).astype(np.uint8).view("S8").ravel().astype("U8")
    suffix_arr = np.broadcast_to(np.asarray(suffix), prefix.shape).astype("U")
    return np.char.add(np.char.add(letters, "-"), suffix_arr)


def decode_cell_ids(cell_ids: np.ndarray | list[str]) -> np.ndarray:
    """Xenium string ids to their uint32 prefix, vectorized; raises on malformed ids."""
    arr = np.asarray(cell_ids, dtype="U")
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint32)
    letters = np.char.partition(arr, "-")[..., 0]
    raw = letters.astype("S8")
    codes = np.frombuffer(raw.tobytes(), dtype=np.uint8).reshape(-1, 8).astype(np.int64) - ord("a")
    bad = (np.char.str_len(letters) != 8) | (codes < 0).any(1) | (codes > 15).any(1)
    if bad.any():
        example = arr[np.flatnonzero(bad)[0]]
        raise ValueError(f"malformed Xenium cell id {example!r}: cell ids look like 'aaaachba-1' (8 letters a-p, '-', suffix)")
    return (codes << _SHIFTS.astype(np.int64)).sum(1).astype(np.uint32)


def cell_ids_to_mask_ints(cell_ids: np.ndarray | list[str]) -> np.ndarray:
    """Integer used in cell-id masks: prefix + 1, so 0 is background."""
    return decode_cell_ids(cell_ids).astype(np.int64) + 1


HASHED_MASK_OFFSET = 1 << 33  # above every Xenium mask id (prefix + 1 <= 2**32)


def is_xenium_cell_id(cell_ids: np.ndarray | list[str]) -> np.ndarray:
    """Which ids are Xenium-coded (``aaaachba-1``): others come from Baysor, Proseg or other segmenters."""
    arr = np.asarray(cell_ids, dtype="U")
    if arr.size == 0:
        return np.zeros(0, bool)
    letters, dash, suffix = (np.char.partition(arr, "-")[..., i] for i in range(3))
    ok = (np.char.str_len(letters) == 8) & (dash == "-") & (np.char.str_len(suffix) > 0)
    raw = np.frombuffer(np.where(ok, letters, "aaaaaaaa").astype("S8").tobytes(), np.uint8).reshape(-1, 8)
    return ok & ((raw >= ord("a")) & (raw <= ord("p"))).all(1)


def mask_ints(cell_ids: np.ndarray | list[str]) -> tuple[np.ndarray, str]:
    """Mask integers of a slide's cell ids and the scheme used.

    Xenium-coded ids keep ``prefix + 1`` (``xenium``). Ids of other segmenters (Baysor, Proseg: ``cell-12``,
    ``4711``) get a stable 52-bit hash above the Xenium range (``hashed``): the same id always maps to the
    same integer, in every stage and every run; ingest stores the mapping in cells.parquet (``mask_id``).
    """
    arr = np.asarray(cell_ids, dtype="U")
    if arr.size == 0 or is_xenium_cell_id(arr).all():
        return cell_ids_to_mask_ints(arr), "xenium"
    digests = [hashlib.blake2b(c.encode(), digest_size=8).digest() for c in arr.tolist()]
    ints = np.frombuffer(b"".join(digests), dtype=">u8").astype(np.uint64) >> np.uint64(12)
    out = ints.astype(np.int64) + HASHED_MASK_OFFSET
    unique_ids, first = np.unique(arr, return_index=True)
    if len(np.unique(out[first])) != len(unique_ids):
        raise ValueError("two cell ids hash to the same mask integer: rename the slide's cells (e.g. prefix them)")
    return out, "hashed"
