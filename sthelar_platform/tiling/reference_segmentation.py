"""An independent H&E nucleus segmentation of every patch, the other side of the agreement QC.

The default is classical and needs no downloaded weights: a nuclear signal (luminance
optical density weighted by the hematoxylin share from colour deconvolution, see
:func:`nuclear_signal`), smoothing, a threshold, and a distance-transform watershed that
splits touching nuclei. Any object with a ``segment(rgb, um_per_px) -> int32 instances`` method
(``NucleusSegmenter``) can replace it, e.g. a trained CellViT model, which the asset layer builds
(``sthelar_platform.model.cellvit.inference.cellvit_segmenter``) and hands in.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage

from sthelar_platform.core.config.tiling import ClassicalSegmenterConfig
from sthelar_platform.core.errors import InputError, require_readable_parquet, require_stage_output
from sthelar_platform.core.stain import luminance_density
from sthelar_platform.core.warehouse import PatchesFolder, ReferenceSegmentationFolder
from sthelar_platform.registration.transform import hematoxylin, hematoxylin_eosin
from sthelar_platform.tiling.patches import save_npz


class NucleusSegmenter(Protocol):
    @property
    def name(self) -> str: ...

    def segment(self, rgb: np.ndarray, um_per_px: float) -> np.ndarray:
        """(H, W) int32 nucleus instances (0 = background) of an (H, W, 3) uint8 image."""


def nuclear_signal(rgb: np.ndarray, um_per_px: float, signal: str = "luminance_guided",
                   chroma_sigma_um: float = 0.6) -> np.ndarray:
    """Per-pixel nuclear stain strength of an RGB image.

    Scanners and JPEG keep luminance at full resolution but often store chroma at half
    (YCbCr 4:2:0), so a colour deconvolution's edges move with the codec. ``luminance_guided``
    takes the edges from the luminance optical density and only the decision *what is nuclear*
    from the hematoxylin share of a deconvolution at chroma resolution; ``hematoxylin`` is the
    plain Ruifrok-Johnston channel.
    """
    rgb = np.ascontiguousarray(rgb[..., :3])
    if signal == "hematoxylin":
        return hematoxylin(rgb)
    density = luminance_density(rgb)
    hed = hematoxylin_eosin(cv2.GaussianBlur(rgb, (0, 0), chroma_sigma_um / um_per_px))
    h, e = np.clip(hed[..., 0], 0, None), np.clip(hed[..., 1], 0, None)
    return density * h / (h + e + 1e-6)


@dataclass(frozen=True)
class ClassicalSegmenter:
    signal: str = "luminance_guided"
    chroma_sigma_um: float = 0.6
    smoothing_sigma_um: float = 0.4
    threshold: float | str = "otsu"
    min_threshold: float = 0.08
    min_area_um2: float = 6.0
    peak_min_distance_um: float = 2.5
    name: str = "classical"

    def segment(self, rgb: np.ndarray, um_per_px: float) -> np.ndarray:
        from skimage.feature import peak_local_max
        from skimage.filters import threshold_otsu
        from skimage.segmentation import watershed

        hem = ndimage.gaussian_filter(nuclear_signal(rgb, um_per_px, self.signal, self.chroma_sigma_um),
                                      self.smoothing_sigma_um / um_per_px)
        if self.threshold == "otsu":
            thr = max(float(threshold_otsu(hem)) if np.ptp(hem) > 0 else np.inf, self.min_threshold)
        else:
            thr = float(self.threshold)
        fg = ndimage.binary_fill_holes(hem > thr)
        min_px = self.min_area_um2 / um_per_px**2
        comp, n = ndimage.label(fg)
        if n == 0:
            return np.zeros(fg.shape, np.int32)
        sizes = np.bincount(comp.ravel())
        fg = (sizes >= min_px)[comp] & fg
        dist = cv2.distanceTransform(fg.astype(np.uint8), cv2.DIST_L2, 5)
        dist = ndimage.gaussian_filter(dist, 1.0)
        min_d = max(1, int(round(self.peak_min_distance_um / um_per_px)))
        peaks = peak_local_max(dist, min_distance=min_d, labels=ndimage.label(fg)[0], exclude_border=False)
        markers = np.zeros(fg.shape, np.int32)
        markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1)
        return watershed(-dist, markers, mask=fg).astype(np.int32)


def classical_segmenter(cfg: ClassicalSegmenterConfig) -> ClassicalSegmenter:
    """The configured classical segmenter (``reference_segmentation.classical`` in tiling.yaml).

    A trained model (``method: cellvit``) is built by the model stage and handed in by the asset layer:
    tiling never imports the model package.
    """
    return ClassicalSegmenter(**cfg.model_dump())


def segment_patches(patches_dir: Path, out: Path, segmenter: NucleusSegmenter, compresslevel: int = 1,
                    workers: int = 2, progress: Callable[[int, int], None] | None = None) -> dict:
    """Segment every patch image of one magnification; writes ``<name>.npz`` (inst_map) per patch."""
    patches = PatchesFolder(patches_dir)
    table = pd.read_parquet(require_readable_parquet(patches.patches, patches_dir.name))
    summary = json.loads(require_stage_output(patches.summary, patches_dir.name).read_text())
    out.mkdir(parents=True, exist_ok=True)
    counts_file = out / ReferenceSegmentationFolder.COUNTS
    if "skipped" in summary:  # no patches at this magnification (e.g. a 20x-only scan): nothing to segment
        pd.DataFrame({"name": pd.Series(dtype=str), "n_ref_nuclei": pd.Series(dtype=int)}).to_parquet(counts_file)
        return {"magnification": summary["magnification"], "n_patches": 0, "segmenter": segmenter.name,
                "n_ref_nuclei": 0, "skipped": summary["skipped"]}
    um = float(summary["um_per_px"])

    def one(name: str) -> int:
        path = patches.images / f"{name}.png"
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(path, "patch image missing or unreadable", "materialize the patches asset again")
        inst = segmenter.segment(bgr[..., ::-1], um)
        save_npz(out / f"{name}.npz", {"inst_map": inst}, compresslevel)
        return int(inst.max())

    counts = []
    names = table["name"].tolist()
    with ThreadPoolExecutor(workers) as pool:
        for i, n in enumerate(pool.map(one, names)):
            counts.append(n)
            if progress and (i + 1) % 64 == 0:
                progress(i + 1, len(names))
    pd.DataFrame({"name": names, "n_ref_nuclei": np.asarray(counts, int)}).to_parquet(counts_file)
    return {"magnification": summary["magnification"], "n_patches": len(names), "segmenter": segmenter.name,
            "n_ref_nuclei": int(np.sum(counts)) if counts else 0}
