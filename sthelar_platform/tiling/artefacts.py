"""Scanning and handling artefacts of a patch, measured from its pixels: focus and marker ink.

The agreement flag (Jaccard against the Xenium masks) catches patches whose H&E no longer shows the
nuclei the masks hold, such as a pen stroke over tissue. It misses out-of-focus patches: a classical
segmenter still finds blurred nuclei well enough (benchmarks/results/patch_flag_calibration.json). A
blurred patch teaches a model to find nuclei in images that show none of their texture, so the focus
measure flags it directly. Focus is judged against the slide's own median at the same magnification,
since stain, scanner and tissue set its absolute level.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from sthelar_platform.core.errors import InputError
from sthelar_platform.core.stain import luminance_density

MIN_TISSUE_SHARE = 0.1  # a patch with less tissue has no focus of its own (NaN)


def focus_measure(rgb: np.ndarray, tissue_od: float = 0.08) -> float:
    """Variance of the Laplacian of the luminance density over tissue pixels, divided by the density's own
    variance there (NaN on a patch that is mostly glass).

    Sharp nuclear borders and chromatin give large second derivatives, and defocus removes them first;
    dividing by the contrast keeps a patch of pale stroma from reading as blurred beside a crowded one.
    """
    od = luminance_density(rgb)
    tissue = (od > tissue_od) & ~ink_mask(rgb)  # ink is flagged on its own; its flat colour is not blur
    if tissue.mean() < MIN_TISSUE_SHARE:
        return float("nan")
    lap = cv2.Laplacian(od, cv2.CV_32F, ksize=3)
    return float(lap[tissue].var() / max(float(od[tissue].var()), 1e-9))


def ink_mask(rgb: np.ndarray, margin: int = 12) -> np.ndarray:
    """Pixels coloured like marker ink and unlike any mix of hematoxylin and eosin.

    Both stains absorb green more than red, so stained tissue is never greener than it is red; blue and
    green inks are (green and blue both above red by ``margin``). Black ink is dark and grey: all three
    channels low and within ``margin`` of each other.
    """
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    coloured = (g > r + margin) & (b > r + margin)
    black = (np.maximum(np.maximum(r, g), b) < 60) & (np.abs(r - g) < margin) & (np.abs(g - b) < margin)
    return coloured | black


def ink_fraction(rgb: np.ndarray) -> float:
    """Share of the patch's pixels under marker ink (``ink_mask``)."""
    return float(ink_mask(rgb).mean())


def measure_patches(images_dir: Path, names: Iterable[str], workers: int = 2) -> pd.DataFrame:
    """``focus`` and ``ink_fraction`` of each patch image ``images_dir/<name>.png``."""
    def one(name: str) -> tuple[float, float]:
        path = images_dir / f"{name}.png"
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(path, "patch image missing or unreadable", "materialize the patches of this slide again")
        rgb = bgr[..., ::-1]
        return focus_measure(rgb), ink_fraction(rgb)

    names = list(names)
    with ThreadPoolExecutor(workers) as pool:
        rows = list(pool.map(one, names))
    return pd.DataFrame(rows, columns=["focus", "ink_fraction"], index=names)


def flag_artefacts(frame: pd.DataFrame, focus_ratio_below: float, ink_above: float) -> pd.DataFrame:
    """Add ``focus_ratio`` (focus / the frame's median), ``out_of_focus`` and ``ink`` to one slide's
    patches of one magnification; an undefined focus is never flagged.
    """
    out = frame.copy()
    median = float(np.nanmedian(out["focus"])) if out["focus"].notna().any() else float("nan")
    out["focus_ratio"] = out["focus"] / median if median > 0 else np.nan
    out["out_of_focus"] = out["focus_ratio"] < focus_ratio_below
    out["ink"] = out["ink_fraction"] > ink_above
    return out
