"""How separable the nucleus types of a training dataset are from simple per-nucleus features.

Usage: python benchmarks/type_separability.py --home HOME [--magnification 20x] [--out FILE.json]

A reference for the CellViT models' class F1: for every ground-truth nucleus of the exported
patches, shape (area, axes, eccentricity, solidity, orientation), optical density inside it and in a
4 px ring around it, and the nucleus density around it; a gradient-boosted classifier with balanced
class weights trains on the train split and is scored on the test split (per-class F1 over classes
present there). Ground-truth masks are used, so this is what a perfect segmenter plus a simple type
classifier would reach, not a model result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import emit, peak_rss_mb  # noqa: E402


def nucleus_features(image: np.ndarray, inst: np.ndarray, types: np.ndarray) -> list[dict]:
    """One row per nucleus of a patch: its majority type and its shape, stain and context features."""
    from scipy import ndimage
    from skimage.measure import regionprops

    od = -np.log((image.astype(np.float32) + 1) / 256)
    nuclei = inst > 0
    density = ndimage.uniform_filter(nuclei.astype(np.float32), 41)
    rows = []
    for p in regionprops(inst):
        own = inst[p.slice] == p.label
        label = int(np.bincount(types[p.slice][own]).argmax())
        if label == 0:
            continue
        ring = ndimage.binary_dilation(inst == p.label, iterations=4) & ~nuclei
        inside = od[p.slice][own]
        y, x = (int(v) for v in p.centroid)
        rows.append({"type": label, "area": p.area, "major": p.axis_major_length, "minor": p.axis_minor_length,
                     "eccentricity": p.eccentricity, "solidity": p.solidity, "orientation": abs(np.sin(p.orientation)),
                     **{f"od_{c}": float(inside[:, c].mean()) for c in range(3)},
                     **{f"od_sd_{c}": float(inside[:, c].std()) for c in range(3)},
                     **{f"ring_od_{c}": float(od[ring][:, c].mean()) if ring.any() else 0.0 for c in range(3)},
                     "density": float(density[y, x])})
    return rows


def grouping_report(gdir: Path) -> dict:
    """Features of every nucleus of one grouping's patches, the classifier and its test-split F1."""
    from PIL import Image
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import f1_score

    classes = json.loads((gdir / "class_weights.json").read_text())["classes"]
    splits = pd.read_csv(gdir / "splits.csv")
    rows = []
    for r in splits.itertuples():
        image = np.asarray(Image.open(gdir / "images" / r.img).convert("RGB"))
        labels = np.load(gdir / "labels" / f"{Path(r.img).stem}.npz")
        rows += [{"split": r.split, **f} for f in nucleus_features(image, labels["inst_map"], labels["type_map"])]
    table = pd.DataFrame(rows)
    x, y = table.drop(columns=["split", "type"]).to_numpy(), table["type"].to_numpy()
    train, test = (table["split"] == "train").to_numpy(), (table["split"] == "test").to_numpy()
    model = HistGradientBoostingClassifier(max_iter=300, class_weight="balanced", random_state=0).fit(x[train], y[train])
    present = sorted(set(y[test]))
    f1 = f1_score(y[test], model.predict(x[test]), labels=present, average=None)
    per_class = {classes[c]: round(float(v), 4) for c, v in zip(present, f1, strict=True)}
    return {"n_train_nuclei": int(train.sum()), "n_test_nuclei": int(test.sum()),
            "mean_class_f1": round(float(np.mean(f1)), 4), "class_f1": per_class}


def main(argv: list[str] | None = None) -> int:
    """Score both groupings of a home's training dataset at one magnification."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--magnification", default="20x")
    p.add_argument("--groupings", nargs="+", default=["detailed", "grouped"])
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    dataset = args.home / "exports" / "dataset" / args.magnification
    report = {"benchmark": "type_separability", "dataset": str(dataset), "features": "ground-truth masks",
              "groupings": {g: grouping_report(dataset / g) for g in args.groupings}}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["peak_rss_mb"] = peak_rss_mb()
    report["command"] = "python benchmarks/type_separability.py " + " ".join(argv if argv is not None else sys.argv[1:])
    return emit(report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
