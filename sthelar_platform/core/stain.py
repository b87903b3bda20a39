"""Stain amounts and directions of an H&E image, measured from its pixels.

``luminance_density`` is the stain amount whatever its colour (the reference segmenter's edges, the
patch focus measure). ``macenko_vectors`` estimates the stain directions (Macenko et al. 2009): it
measured the real H&E that the realistic synthetic world's stains come from, and checks that rendered
slides carry the stains they were drawn with.
"""

from __future__ import annotations

import cv2
import numpy as np


def luminance_density(rgb: np.ndarray) -> np.ndarray:
    """Optical density of the luminance (float32): stain amount, whatever its colour.

    Scanners and JPEG keep luminance at full resolution, so its edges do not move with the codec.
    """
    luma = cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2GRAY).astype(np.float32)
    return -np.log10((luma + 1) / 256)


def macenko_vectors(rgb: np.ndarray, background: float = 0.15, alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Unit hematoxylin and eosin optical-density vectors (RGB): the two extreme directions of the tissue's
    optical densities in their main plane; pixels under ``background`` OD in any channel are glass.
    """
    od = -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1) / 256)
    od = od[(od > background).all(1)]
    if len(od) < 10:
        raise ValueError(f"only {len(od)} stained pixels: too few to estimate stain vectors")
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, 1:]                                    # the two largest eigenvectors
    proj = od @ plane
    angle = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(angle, [alpha, 100 - alpha])
    v1, v2 = (plane @ np.array([np.cos(a), np.sin(a)]) for a in (lo, hi))
    v1, v2 = (v if v.sum() > 0 else -v for v in (v1, v2))
    h, e = (v1, v2) if v1[0] > v2[0] else (v2, v1)         # hematoxylin absorbs red most
    return h / np.linalg.norm(h), e / np.linalg.norm(e)
