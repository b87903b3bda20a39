"""Texture that is the same function of the global pixel position in every render tile.

Per-tile random fields, normalised per tile, showed every tile's edge in the pyramid; lattice noise
keyed by global lattice coordinates joins without a seam.
"""

from __future__ import annotations

import cv2
import numpy as np

_MIX = (np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))


def _hash_uniform(seed: int, kind: int, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """A uniform (0, 1) value per lattice point (murmur3's 64-bit finaliser over the point's coordinates)."""
    with np.errstate(over="ignore"):
        h = (iy.astype(np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             ^ ix.astype(np.int64).astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
             ^ np.uint64((seed * 1_000_003 + kind) & 0xFFFFFFFFFFFF) * np.uint64(0x165667B19E3779F9))
        for m in _MIX:
            h ^= h >> np.uint64(33)
            h *= m
        h ^= h >> np.uint64(33)
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def seamless_noise(seed: int, kind: int, y0: int, x0: int, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Smooth, zero-mean noise of about unit variance and correlation length ``sigma_px``, for pixels
    ``y0..y0+h``, ``x0..x0+w`` of a global grid: adjacent tiles join without a seam.

    Normal values on a lattice of spacing ~1.5 sigma, keyed by their global lattice position, are
    interpolated bicubically; per-tile random fields normalised per tile showed every tile's edge.
    """
    h, w = shape
    step = max(1.5 * sigma_px, 1.0)
    iy = np.arange(int(np.floor(y0 / step)) - 2, int(np.floor((y0 + h) / step)) + 3)
    ix = np.arange(int(np.floor(x0 / step)) - 2, int(np.floor((x0 + w) / step)) + 3)
    u1 = _hash_uniform(seed, 2 * kind, iy[:, None], ix[None, :])
    u2 = _hash_uniform(seed, 2 * kind + 1, iy[:, None], ix[None, :])
    lattice = (np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)).astype(np.float32)  # Box-Muller
    gy = ((y0 + np.arange(h) + 0.5) / step - iy[0]).astype(np.float32)
    gx = ((x0 + np.arange(w) + 0.5) / step - ix[0]).astype(np.float32)
    map_x, map_y = np.meshgrid(gx, gy)
    return cv2.remap(lattice, map_x, map_y, cv2.INTER_CUBIC) / _CUBIC_RMS


_CUBIC_RMS = 0.86  # rms of bicubically interpolated unit normals (measured 0.84-0.86 for sigma of 1.6-15 px)
