"""Small PNG previews for asset metadata and dashboards."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Contrast-stretch any image (grey or RGB, any dtype) to uint8 for display."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] in (1, 3, 4) and img.shape[-1] not in (3, 4):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.dtype == np.uint8:
        return img
    lo, hi = np.percentile(img, [1, 99.5])
    return np.clip((img.astype(np.float32) - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)


def save_png(img: np.ndarray, path: str | Path, max_px: int = 512) -> Path:
    """Save a preview at most ``max_px`` on its long side."""
    pil = Image.fromarray(to_uint8(img))
    pil.thumbnail((max_px, max_px))
    pil.save(path, optimize=True)
    return Path(path)


def png_data_uri(path: str | Path, max_px: int = 256) -> str:
    """Base64 data URI of a small copy (kept small: it lives in Dagster's event log)."""
    pil = Image.open(path)
    pil.thumbnail((max_px, max_px))
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
