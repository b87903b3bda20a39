"""The training dataset at cohort scale: 30 SYNTHETIC slides x 20,000 exported 40x patches each.

Usage: python benchmarks/training_dataset_cohort.py --workdir DIR [--slides 30] [--patches 20000] [--out FILE.json]

Writes a slide_export-shaped folder per slide (cell_count.csv, patches.csv, one PNG and one npz per
patch and grouping; the grouped folder's PNGs are hard links to the detailed ones, as the export
makes them), then times ``write_training_dataset`` with our own folders only: every patch file must
arrive as a hard link (same inode), so the dataset adds directory entries, not bytes. The patch
files are small valid PNG / npz files: the dataset step never decodes them. The layouts that do
read every patch (sthelar zips, HF shards) are measured on the demo's real patches in
``dataset_layouts.py``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import emit, peak_rss_mb  # noqa: E402

TISSUES = ("breast", "skin", "brain")


def _patch_bytes() -> tuple[bytes, bytes]:
    import cv2

    ok, png = cv2.imencode(".png", np.full((256, 256, 3), 200, np.uint8))
    buf = io.BytesIO()
    np.savez_compressed(buf, inst_map=np.zeros((256, 256), np.int32), type_map=np.zeros((256, 256), np.uint8))
    return png.tobytes(), buf.getvalue()


def fabricate_exports(exports: Path, n_slides: int, n_patches: int, groupings: dict[str, tuple[str, ...]]) -> list[str]:
    """slide_export-shaped folders (40x only) for ``n_slides`` slides of ``n_patches`` patches each."""
    from sthelar_platform.core.warehouse import SlideExportFolder

    png, npz = _patch_bytes()
    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(n_patches)))
    slides = [f"cohort_s{i:02d}" for i in range(n_slides)]
    for i, slide in enumerate(tqdm(slides, desc="fabricating exports", unit="slide")):
        root = exports / slide
        names = [f"{slide}_{k // side:03d}_{k % side:03d}" for k in range(n_patches)]
        row, col = np.divmod(np.arange(n_patches), side)
        first = None
        for grouping, classes in groupings.items():
            d = root / "cellvit" / "40x" / grouping
            (d / "images").mkdir(parents=True)
            (d / "labels").mkdir()
            for name in names:
                target = d / "images" / f"{name}.png"
                if first is None:
                    target.write_bytes(png)
                else:
                    os.link(first / "images" / f"{name}.png", target)
                (d / "labels" / f"{name}.npz").write_bytes(npz)
            first = first or d
            counts = pd.DataFrame(rng.poisson(1.5, (n_patches, len(classes))), columns=list(classes))
            counts.insert(0, "Image", [f"{n}.png" for n in names])
            counts.to_csv(d / "cell_count.csv", index=False)
            pd.DataFrame({"name": names, "row": row, "col": col, "x0": col * 192, "y0": row * 192,
                          "tissue": TISSUES[i % len(TISSUES)], "downsample": 1, "dice": 0.9, "jaccard": 0.85,
                          "bpq": 0.8}).to_csv(d / "patches.csv", index=False)
        SlideExportFolder(root).summary.write_text(json.dumps({"slide_id": slide, "synthetic": True}))
    return slides


def _disk_used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def main(argv: list[str] | None = None) -> int:
    """Fabricate the cohort's exports, then time the dataset's hard-linked folders."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--slides", type=int, default=30)
    p.add_argument("--patches", type=int, default=20_000)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    from sthelar_platform.core.config import load_categories, load_config
    from sthelar_platform.model.dataset import write_training_dataset

    cfg, categories = load_config("training"), load_categories()
    dataset_cfg = cfg.dataset.model_copy(update={"layouts": [], "magnification": "40x", "magnifications": ["40x"]})
    settings = cfg.model_copy(update={"dataset": dataset_cfg})
    groupings = {g: categories.groupings[g].classes for g in dataset_cfg.groupings}
    work = args.workdir / "training_dataset_cohort"
    shutil.rmtree(work, ignore_errors=True)
    exports = work / "exports"
    t0 = time.perf_counter()
    slides = fabricate_exports(exports, args.slides, args.patches, groupings)
    fabricate_s = time.perf_counter() - t0
    used_before = _disk_used(work)
    t0 = time.perf_counter()
    card = write_training_dataset(exports, slides, work / "dataset", settings, categories)
    dataset_s = time.perf_counter() - t0
    added = _disk_used(work) - used_before
    n_kept = sum(sum(card["groupings"][g]["patches"].values()) for g in groupings)
    sample = next((work / "dataset" / "40x" / next(iter(groupings)) / "images").iterdir())
    source = exports / sample.name.rsplit("_", 2)[0] / "cellvit" / "40x" / next(iter(groupings)) / "images" / sample.name
    report = {
        "benchmark": "training_dataset_cohort", "slides": args.slides, "patches_per_slide": args.patches,
        "groupings": list(groupings), "magnification": "40x", "split": dataset_cfg.split,
        "fabricate_s": round(fabricate_s, 1), "dataset_s": round(dataset_s, 1),
        "patches_linked": n_kept, "files_linked": 2 * n_kept,
        "throughput": round(n_kept / dataset_s, 1), "throughput_unit": "patches/s (image + label linked per patch)",
        "hard_linked": sample.stat().st_ino == source.stat().st_ino,
        "disk_added_mb": round(added / 1e6, 1), "disk_added_bytes_per_patch": round(added / max(n_kept, 1), 1),
        "peak_rss_mb": peak_rss_mb(),
        "command": "python benchmarks/training_dataset_cohort.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    shutil.rmtree(work)
    return emit(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
