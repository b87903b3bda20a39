"""Whether the patch-QC Jaccard flag catches the patches whose H&E is spoiled, on realistic SYNTHETIC slides.

    .venv/bin/python benchmarks/patch_flag_calibration.py --home /tmp/demo_rw [--out F.json]

A realistic world's slides record where their artefacts lie (truth/he_appearance.json): out-of-focus
patches, a fold, a bubble, a pen mark. A patch is *spoiled* when at least a quarter of it lies under
one, *clean* when none of it does (patches partly under one are reported apart), and *blurred* when
three quarters lie in an out-of-focus region. Per magnification, from
segmentation_agreement's per-patch table, the report sweeps each flag's threshold (tiling.yaml
agreement): Jaccard against every spoiled patch, the focus ratio against blurred patches and the ink
fraction against pen patches, each beside the share of clean patches it flags; then it gives, per
artefact, the share flagged at the configured thresholds and for which reasons.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import emit, peak_rss_mb  # noqa: E402
from sthelar_platform.core.config import load_config  # noqa: E402
from sthelar_platform.synth._he_artefacts import SlideArtefacts  # noqa: E402

THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
FOCUS_THRESHOLDS = (0.4, 0.5, 0.6, 0.7, 0.8)
INK_THRESHOLDS = (0.005, 0.01, 0.02, 0.05)
SPOILED_SHARE = 0.25
BLURRED_SHARE = 0.75


def patch_points(corners_um: list[float], n: int = 8) -> np.ndarray:
    """An n x n grid of points over a patch given by its four corners (x, y pairs, in order)."""
    c = np.asarray(corners_um, float).reshape(4, 2)
    u, v = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n)
    u, v = u.ravel()[:, None], v.ravel()[:, None]
    return (1 - u) * (1 - v) * c[0] + u * (1 - v) * c[1] + u * v * c[2] + (1 - u) * v * c[3]


def spoiled_patches(home: Path, slide: str, magnification: str, art: SlideArtefacts) -> pl.DataFrame:
    """Each patch's share under each artefact and, where one covers a quarter of it, that artefact's name."""
    patches = pl.read_parquet(home / "warehouse" / f"patches_{magnification}" / slide / "patches.parquet")
    rows = []
    for pid, corners in zip(patches["patch_id"], patches["corners_um"], strict=True):
        covered = art.covers(patch_points(corners))
        share = {k: float(v.mean()) for k, v in covered.items()}
        worst = max(share, key=share.get)
        kind = worst if share[worst] >= SPOILED_SHARE else ("partial" if share[worst] > 0 else "none")
        rows.append({"patch_id": pid, **{f"{k}_share": s for k, s in share.items()}, "artefact": kind})
    return pl.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    """Sweep the flag threshold over a home's realistic slides."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    acfg = load_config("tiling").agreement
    configured = {k: float(getattr(acfg, k)) for k in ("flag_below_jaccard", "flag_focus_ratio_below", "flag_ink_above")}
    frames = []
    for appearance in sorted((args.home / "landing").glob("*/slides/*/truth/he_appearance.json")):
        slide = appearance.parents[1].name
        art = SlideArtefacts.from_dict(json.loads(appearance.read_text())["artefacts"])
        agreement = pl.read_parquet(args.home / "warehouse" / "segmentation_agreement" / slide / "agreement.parquet")
        for mag in ("40x", "20x"):
            spoiled = spoiled_patches(args.home, slide, mag, art)
            frames.append(agreement.filter(pl.col("magnification") == mag).join(spoiled, on="patch_id")
                          .select("slide_id", "magnification", "patch_id", "jaccard", "focus_ratio", "ink_fraction",
                                  "flag_reasons", "artefact", "blur_share"))
    if not frames:
        raise SystemExit(f"no realistic slides with truth/he_appearance.json under {args.home / 'landing'}")
    table = pl.concat(frames)
    result: dict = {"benchmark": "patch_flag_calibration", "home": str(args.home), "configured": configured,
                    "spoiled_share": SPOILED_SHARE, "blurred_share": BLURRED_SHARE, "by_magnification": {}}

    def share(frame: pl.DataFrame, mask: pl.Expr) -> float | None:
        return round(float(frame.select(mask.fill_null(False).mean()).item()), 3) if frame.height else None

    for mag in ("40x", "20x"):
        t = table.filter(pl.col("magnification") == mag)
        clean = t.filter(pl.col("artefact") == "none")
        spoiled = t.filter(~pl.col("artefact").is_in(["none", "partial"]))
        blurred = t.filter(pl.col("blur_share") >= BLURRED_SHARE)
        pen = t.filter(pl.col("artefact") == "pen")
        sweeps = {
            "jaccard": [{"threshold": x, "spoiled_flagged": share(spoiled, pl.col("jaccard") < x),
                         "clean_flagged": share(clean, pl.col("jaccard") < x)} for x in THRESHOLDS],
            "focus_ratio": [{"threshold": x, "blurred_flagged": share(blurred, pl.col("focus_ratio") < x),
                             "clean_flagged": share(clean, pl.col("focus_ratio") < x)} for x in FOCUS_THRESHOLDS],
            "ink_fraction": [{"threshold": x, "pen_flagged": share(pen, pl.col("ink_fraction") > x),
                              "clean_flagged": share(clean, pl.col("ink_fraction") > x)} for x in INK_THRESHOLDS],
        }
        by_kind = {}
        for (kind,), g in t.group_by("artefact"):
            reasons = g["flag_reasons"].str.split(",")
            by_kind[kind] = {"n": g.height, "median_jaccard": round(float(g["jaccard"].median()), 3),
                             "flagged": share(g, pl.col("flag_reasons") != ""),
                             **{f"flagged_{r}": round(float(reasons.list.contains(r).mean()), 3)
                                for r in ("low_jaccard", "out_of_focus", "ink")}}
        result["by_magnification"][mag] = {"n_patches": t.height, "n_spoiled": spoiled.height, "n_blurred": blurred.height,
                                           "by_artefact": by_kind, "sweeps": sweeps}
    result["peak_rss_mb"] = peak_rss_mb()
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
