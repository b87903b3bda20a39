"""Training-dataset layouts on the slides a home already exported (e.g. after `make demo`).

Usage: python benchmarks/dataset_layouts.py [--home sthelar_home] [--out FILE.json]

Writes the training dataset of every exported slide into a temporary folder twice: our own folders
alone, then with every layout (sthelar, cellvit_folds, hf), and reports the time each layout adds,
patches per second and the process's peak RSS as JSON.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._report import emit, peak_rss_mb  # noqa: E402


def _timed(exports: Path, slides: list[str], cfg, categories, layouts: list[str]) -> tuple[float, dict]:
    from sthelar_platform.model.dataset import write_training_dataset

    settings = cfg.model_copy(update={"dataset": cfg.dataset.model_copy(update={"layouts": layouts})})
    out = Path(tempfile.mkdtemp(prefix="dataset_bench_", dir=exports.parent)) / "dataset"
    try:
        t0 = time.perf_counter()
        card = write_training_dataset(exports, slides, out, settings, categories)
        return time.perf_counter() - t0, card
    finally:
        shutil.rmtree(out.parent)


def main(argv: list[str] | None = None) -> int:
    """Time the dataset with and without its layouts on a home's exports."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", type=Path, default=ROOT / "sthelar_home")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    from sthelar_platform.core.config import load_categories, load_config

    exports = args.home / "exports"
    slides = sorted(d.name for d in exports.iterdir() if (d / "cellvit").is_dir()) if exports.is_dir() else []
    if not slides:
        print(f"no slide exports under {exports}: run `make demo` first", file=sys.stderr)
        return 2
    cfg, categories = load_config("training"), load_categories()
    base_s, card = _timed(exports, slides, cfg, categories, [])
    report: dict = {"benchmark": "dataset_layouts", "slides": slides, "own_folders_s": round(base_s, 2), "layouts": {}}
    n = sum(sum(d["patches"].values()) for m in card["by_magnification"].values() for d in m.values())
    report["patches_per_copy"] = n
    for layout in ("sthelar", "cellvit_folds", "hf"):
        total_s, _ = _timed(exports, slides, cfg, categories, [layout])
        extra = max(total_s - base_s, 1e-9)
        report["layouts"][layout] = {"added_s": round(extra, 2), "throughput": round(n / extra, 1),
                                     "throughput_unit": "patches/s (all magnifications and groupings)"}
    report["peak_rss_mb"] = peak_rss_mb()
    return emit(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
