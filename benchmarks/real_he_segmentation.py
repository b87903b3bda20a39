"""The reference segmenter on real H&E from a package wheel beside the SYNTHETIC demo patches.

Usage: python benchmarks/real_he_segmentation.py --home sthelar_home [--simple-home H] [--out FILE.json] [--figure FILE.png]

Real data: stardist's wheel ships ``histo.jpg`` (500 x 300 px of real H&E; nuclei ~25 px across,
so read as 40x, 0.25 µm/px) and DSB2018 fluorescence nuclei with masks (``img2d.tif``,
``mask2d.tif``). The classical reference segmenter (sthelar_platform/config/tiling.yaml) runs on the real tile and on
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
from sthelar_platform.core.stain import macenko_vectors  # noqa: E402
from sthelar_platform.tiling.reference_segmentation import classical_segmenter  # noqa: E402

UM_PER_PX = 0.25  # the 40x pixel size the real tile is read at, and the demo's 40x patches have


def wheel_images() -> Path:
    """The sample images in stardist's wheel, found without importing stardist (it would want TensorFlow)."""
    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("stardist is not installed: `make test` installs it (the test extra)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "images"


def stain_vectors(rgb: np.ndarray) -> dict[str, list[float]]:
    """Macenko stain vectors, rounded for the report."""
    h, e = macenko_vectors(rgb)
    return {"hematoxylin": [round(float(x), 4) for x in h], "eosin": [round(float(x), 4) for x in e]}


def nucleus_stats(instances: list[np.ndarray], um_per_px: float) -> dict:
    """Count, density per 10,000 µm² and the area distribution (µm²) of instance maps."""
    areas = np.concatenate([np.bincount(i.ravel())[1:][np.bincount(i.ravel())[1:] > 0] for i in instances]) * um_per_px**2
    tissue_um2 = sum(i.size for i in instances) * um_per_px**2
    q = np.percentile(areas, [10, 50, 90]) if len(areas) else [np.nan] * 3
    return {"n_nuclei": int(len(areas)), "per_10k_um2": round(len(areas) / tissue_um2 * 1e4, 1),
            "area_um2_p10": round(float(q[0]), 1), "area_um2_median": round(float(q[1]), 1),
            "area_um2_p90": round(float(q[2]), 1)}


def figure(columns: list[tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """H&E images side by side (same 40x scale), with the reference segmenter's outlines below each."""
    def outlined(rgb: np.ndarray, inst: np.ndarray) -> np.ndarray:
        out = rgb.copy()
        edges = cv2.morphologyEx(inst.astype(np.uint16), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        out[edges] = (0, 255, 0)
        return out

    side = min(min(rgb.shape[:2]) for rgb, _ in columns)
    gap = np.full((side, 8, 3), 255, np.uint8)

    def row(cells: list[np.ndarray]) -> np.ndarray:
        return np.hstack([x for c in cells for x in (c, gap)][:-1])

    top = row([rgb[:side, :side] for rgb, _ in columns])
    bottom = row([outlined(rgb[:side, :side], inst[:side, :side]) for rgb, inst in columns])
    img = np.vstack([top, np.full((8, top.shape[1], 3), 255, np.uint8), bottom])
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img[..., ::-1])


def demo_patches(home: Path, n: int, segmenter) -> tuple[list, list, list, Path]:
    """``n`` random 40x dataset patches of a home: images, the segmenter's instances, the truth's."""
    gdir = home / "exports" / "dataset" / "40x" / "detailed"
    names = sorted(p.name for p in (gdir / "images").glob("*.png"))
    if not names:
        raise SystemExit(f"no 40x dataset patches under {gdir}: run `sthelar demo` on that home first")
    chosen = np.random.default_rng(0).choice(names, min(n, len(names)), replace=False)
    rgbs, pred, truth = [], [], []
    for name in chosen:
        rgb = cv2.imread(str(gdir / "images" / name))[..., ::-1].copy()
        rgbs.append(rgb)
        pred.append(segmenter.segment(rgb, UM_PER_PX))
        truth.append(np.load(gdir / "labels" / name.replace(".png", ".npz"))["inst_map"])
    return rgbs, pred, truth, gdir


def synthetic_report(home: Path, rgbs: list, pred: list, truth: list, gdir: Path) -> dict:
    """Segmented and true nucleus statistics of a world's patches, and their stain vectors."""
    return {"source": f"{len(rgbs)} demo 40x patches ({gdir.relative_to(home)}) of {home}",
            "segmented": nucleus_stats(pred, UM_PER_PX), "truth": nucleus_stats(truth, UM_PER_PX),
            "stain_vectors": stain_vectors(np.concatenate([s.reshape(-1, 3) for s in rgbs])[None])}


def main(argv: list[str] | None = None) -> int:
    """Segment the real tile and demo patches; print / write the comparison."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", type=Path, required=True, help="a platform home with the demo's exports/dataset")
    p.add_argument("--simple-home", type=Path, help="a home of the simple world's demo, shown beside it")
    p.add_argument("--patches", type=int, default=60)
    p.add_argument("--out", type=Path)
    p.add_argument("--figure", type=Path)
    args = p.parse_args(argv)
    segmenter = classical_segmenter(load_config("tiling").reference_segmentation.classical)
    real = cv2.imread(str(wheel_images() / "histo.jpg"))[..., ::-1].copy()
    real_inst = segmenter.segment(real, UM_PER_PX)
    worlds = {"synthetic": args.home, **({"synthetic_simple": args.simple_home} if args.simple_home else {})}
    report = {"benchmark": "real_he_segmentation", "segmenter": segmenter.name, "um_per_px": UM_PER_PX,
              "real": {"source": "stardist 0.9.1 wheel, stardist/data/images/histo.jpg (real H&E, 500 x 300 px)",
                       "segmented": nucleus_stats([real_inst], UM_PER_PX), "stain_vectors": stain_vectors(real)}}
    columns = [(real, real_inst)]
    for key, home in worlds.items():
        rgbs, pred, truth, gdir = demo_patches(home, args.patches, segmenter)
        report[key] = synthetic_report(home, rgbs, pred, truth, gdir)
        crowded = int(np.argmax([len(np.unique(t)) for t in truth]))
        columns.append((rgbs[crowded], pred[crowded]))
    if args.figure:
        figure(columns, args.figure)
    report.update({
        "dapi_side": "no stage segments DAPI (Xenium's nucleus boundaries are used), so the DSB2018 masks "
                     "(stardist/data/images/mask2d.tif) have no stage to score",
        "peak_rss_mb": peak_rss_mb(),
    })
    return emit(report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
