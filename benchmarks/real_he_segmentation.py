"""The reference segmenter on real H&E from a package wheel beside the SYNTHETIC demo patches.

Usage: python benchmarks/real_he_segmentation.py --home sthelar_home [--out FILE.json] [--figure FILE.png]

Real data: stardist's wheel ships ``histo.jpg`` (500 x 300 px of real H&E; nuclei ~25 px across,
so read as 40x, 0.25 µm/px) and DSB2018 fluorescence nuclei with masks (``img2d.tif``,
``mask2d.tif``). The classical reference segmenter (config/tiling.yaml) runs on the real tile and on
40x demo patches; the report gives nucleus counts, density and the area distribution of both, the
synthetic truth's too, and the stain vectors (Macenko) of each, so the synthetic renderer can be
calibrated against real H&E. No stage of the platform segments DAPI (Xenium's own nucleus
boundaries are used), so the DSB2018 masks have no stage to score; the report says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import emit, peak_rss_mb  # noqa: E402
from sthelar_platform.core.config import load_config  # noqa: E402
from sthelar_platform.tiling.reference_segmentation import make_segmenter  # noqa: E402

UM_PER_PX = 0.25  # the 40x pixel size the real tile is read at, and the demo's 40x patches have


def wheel_images() -> Path:
    """The sample images in stardist's wheel, found without importing stardist (it would want TensorFlow)."""
    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("stardist is not installed: `make test` installs it (the test extra)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "images"


def stain_vectors(rgb: np.ndarray, background: float = 0.15, alpha: float = 1.0) -> dict[str, list[float]]:
    """Macenko et al. 2009: the two extreme directions of the tissue's optical densities in their main plane."""
    od = -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1) / 256)
    od = od[(od > background).all(1)]
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, 1:]                                    # the two largest eigenvectors
    proj = od @ plane
    angle = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(angle, [alpha, 100 - alpha])
    v1, v2 = (plane @ np.array([np.cos(a), np.sin(a)]) for a in (lo, hi))
    v1, v2 = (v if v.sum() > 0 else -v for v in (v1, v2))
    h, e = (v1, v2) if v1[0] > v2[0] else (v2, v1)         # hematoxylin absorbs red most
    return {"hematoxylin": [round(float(x), 4) for x in h / np.linalg.norm(h)],
            "eosin": [round(float(x), 4) for x in e / np.linalg.norm(e)]}


def nucleus_stats(instances: list[np.ndarray], um_per_px: float) -> dict:
    """Count, density per 10,000 µm² and the area distribution (µm²) of instance maps."""
    areas = np.concatenate([np.bincount(i.ravel())[1:][np.bincount(i.ravel())[1:] > 0] for i in instances]) * um_per_px**2
    tissue_um2 = sum(i.size for i in instances) * um_per_px**2
    q = np.percentile(areas, [10, 50, 90]) if len(areas) else [np.nan] * 3
    return {"n_nuclei": int(len(areas)), "per_10k_um2": round(len(areas) / tissue_um2 * 1e4, 1),
            "area_um2_p10": round(float(q[0]), 1), "area_um2_median": round(float(q[1]), 1),
            "area_um2_p90": round(float(q[2]), 1)}


def figure(real: np.ndarray, real_inst: np.ndarray, synth: np.ndarray, synth_inst: np.ndarray, path: Path) -> None:
    """Real and synthetic H&E side by side (same 40x scale), with the reference segmenter's outlines below."""
    def outlined(rgb: np.ndarray, inst: np.ndarray) -> np.ndarray:
        out = rgb.copy()
        edges = cv2.morphologyEx(inst.astype(np.uint16), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        out[edges] = (0, 255, 0)
        return out

    side = min(real.shape[0], real.shape[1], synth.shape[0])
    r, s = real[:side, :side], synth[:side, :side]
    gap = np.full((side, 8, 3), 255, np.uint8)
    top = np.hstack([r, gap, s])
    bottom = np.hstack([outlined(r, real_inst[:side, :side]), gap, outlined(s, synth_inst[:side, :side])])
    img = np.vstack([top, np.full((8, top.shape[1], 3), 255, np.uint8), bottom])
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img[..., ::-1])


def main(argv: list[str] | None = None) -> int:
    """Segment the real tile and demo patches; print / write the comparison."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", type=Path, required=True, help="a platform home with the demo's exports/dataset")
    p.add_argument("--patches", type=int, default=60)
    p.add_argument("--out", type=Path)
    p.add_argument("--figure", type=Path)
    args = p.parse_args(argv)
    segmenter = make_segmenter(load_config("tiling")["reference_segmentation"])
    real = cv2.imread(str(wheel_images() / "histo.jpg"))[..., ::-1].copy()
    real_inst = segmenter.segment(real, UM_PER_PX)
    gdir = args.home / "exports" / "dataset" / "40x" / "detailed"
    names = sorted(p.name for p in (gdir / "images").glob("*.png"))
    rng = np.random.default_rng(0)
    chosen = rng.choice(names, min(args.patches, len(names)), replace=False)
    synth, pred, truth = [], [], []
    for name in chosen:
        rgb = cv2.imread(str(gdir / "images" / name))[..., ::-1].copy()
        synth.append(rgb)
        pred.append(segmenter.segment(rgb, UM_PER_PX))
        truth.append(np.load(gdir / "labels" / name.replace(".png", ".npz"))["inst_map"])
    crowded = int(np.argmax([len(np.unique(t)) for t in truth]))
    if args.figure:
        figure(real, real_inst, synth[crowded], pred[crowded], args.figure)
    report = {
        "benchmark": "real_he_segmentation", "segmenter": segmenter.name, "um_per_px": UM_PER_PX,
        "real": {"source": "stardist 0.9.1 wheel, stardist/data/images/histo.jpg (real H&E, 500 x 300 px)",
                 "segmented": nucleus_stats([real_inst], UM_PER_PX), "stain_vectors": stain_vectors(real)},
        "synthetic": {"source": f"{len(chosen)} demo 40x patches ({gdir.relative_to(args.home)})",
                      "segmented": nucleus_stats(pred, UM_PER_PX), "truth": nucleus_stats(truth, UM_PER_PX),
                      "stain_vectors": stain_vectors(np.concatenate([s.reshape(-1, 3) for s in synth])[None])},
        "dapi_side": "no stage segments DAPI (Xenium's nucleus boundaries are used), so the DSB2018 masks "
                     "(stardist/data/images/mask2d.tif) have no stage to score",
        "peak_rss_mb": peak_rss_mb(),
    }
    return emit(report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
