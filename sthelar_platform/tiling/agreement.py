"""Per-patch agreement between the Xenium nucleus masks and the independent H&E segmentation.

Definitions (CellViT's, DESIGN.md): Dice and Jaccard on the binary masks; binary PQ =
DQ x SQ where instances pair when IoU > 0.5 (a pairing that is unique by construction),
DQ = TP / (TP + FP/2 + FN/2) and SQ the mean IoU of the pairs; detection F1 pairs
centroids one-to-one (Hungarian) within a radius. The Xenium masks are the truth: every
metric is undefined (NaN, never 0) on a patch where they hold no nucleus.
All overlaps come from one ``bincount`` over the pixel pairs; no per-instance loops.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from sthelar_platform.core.config.tiling import AgreementConfig
from sthelar_platform.core.errors import InputError, require_readable_parquet, require_stage_output
from sthelar_platform.core.imaging import open_pyramid
from sthelar_platform.core.warehouse import AgreementFolder, PatchesFolder, ReferenceSegmentationFolder
from sthelar_platform.tiling import artefacts
from sthelar_platform.tiling.patches import PatchLevel, draw_patch_overview, load_labels

METRICS = ("dice", "jaccard", "bpq", "dq", "sq", "det_f1")
FLAG_REASONS = ("low_jaccard", "out_of_focus", "ink")


def _compact(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel instance ids to 1..n (0 stays background) without sorting."""
    top = int(values.max()) if values.size else 0
    present = np.zeros(top + 1, bool)
    present[values] = True
    present[0] = False
    lut = np.zeros(top + 1, np.int64)
    ids = np.flatnonzero(present)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[values], len(ids)


def _centroids(labels: np.ndarray, n: int, area: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """(n, 2) x/y centroids of instances 1..n from foreground pixels only."""
    cx = np.bincount(labels, weights=xs, minlength=n + 1)[1:] / np.maximum(area, 1)
    cy = np.bincount(labels, weights=ys, minlength=n + 1)[1:] / np.maximum(area, 1)
    return np.column_stack([cx, cy])


def pair_counts(truth_xy: np.ndarray, pred_xy: np.ndarray, radius: float) -> tuple[int, int, int]:
    """One-to-one centroid pairs within ``radius`` (Hungarian on distances); returns TP, FP, FN."""
    if len(truth_xy) == 0 or len(pred_xy) == 0:
        return 0, len(pred_xy), len(truth_xy)
    d = np.sqrt(((truth_xy[:, None, :] - pred_xy[None, :, :]) ** 2).sum(-1))
    big = radius * 10 + d.max() + 1
    rows, cols = linear_sum_assignment(np.where(d <= radius, d, big))
    tp = int((d[rows, cols] <= radius).sum())
    return tp, len(pred_xy) - tp, len(truth_xy) - tp


def patch_agreement(truth: np.ndarray, pred: np.ndarray, radius_px: float, match_iou: float = 0.5) -> dict[str, float]:
    """All agreement metrics of one patch; NaN everywhere when ``truth`` has no nucleus.

    Only foreground pixels (of either mask) are visited: background-background pixels
    enter no metric.
    """
    tf, pf = truth.ravel(), pred.ravel()
    fg = np.flatnonzero((tf != 0) | (pf != 0))
    t, nt = _compact(tf[fg])
    p, np_ = _compact(pf[fg])
    out: dict[str, float] = {"n_truth": nt, "n_pred": np_}
    if nt == 0:
        return out | dict.fromkeys(METRICS, float("nan")) | {"tp": 0, "fp": np_, "fn": 0}
    joint = np.bincount(t * (np_ + 1) + p, minlength=(nt + 1) * (np_ + 1)).reshape(nt + 1, np_ + 1)
    area_t, area_p = joint.sum(1)[1:], joint.sum(0)[1:]
    inter = joint[1:, 1:]
    inter_fg = inter.sum()
    fg_t, fg_p = area_t.sum(), area_p.sum()
    out["dice"] = float(2 * inter_fg / (fg_t + fg_p))
    out["jaccard"] = float(inter_fg / (fg_t + fg_p - inter_fg))
    iou = inter / (area_t[:, None] + area_p[None, :] - inter)
    matched = iou > match_iou                  # IoU > 0.5 makes every pairing unique
    tp = int(matched.sum())
    fp, fn = np_ - tp, nt - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(iou[matched].mean()) if tp else 0.0
    out.update(dq=float(dq), sq=sq, bpq=float(dq * sq))
    ys, xs = np.divmod(fg, truth.shape[1])
    dtp, dfp, dfn = pair_counts(_centroids(t, nt, area_t, ys, xs), _centroids(p, np_, area_p, ys, xs), radius_px)
    out["det_f1"] = float(2 * dtp / (2 * dtp + dfp + dfn))
    out.update(tp=dtp, fp=dfp, fn=dfn)
    return out


def slide_agreement(patches_dir: Path, ref_dir: Path, radius_px: float, match_iou: float, flag_below_jaccard: float,
                    workers: int = 2, progress: Callable[[int, int], None] | None = None,
                    focus_ratio_below: float | None = None, ink_above: float | None = None) -> pd.DataFrame:
    """One row per patch of one magnification: metrics and whether the patch is flagged, and why.

    A patch is flagged for low Jaccard against the Xenium masks and, when the thresholds are given, for
    being out of focus or carrying marker ink (``artefacts``, measured on ``patches_dir/images``).
    ``flag_reasons`` names every reason that applies.
    """
    patches = PatchesFolder(patches_dir)
    table = pd.read_parquet(require_readable_parquet(patches.patches, patches_dir.name),
                            columns=["slide_id", "magnification", "patch_id", "name", "x0", "y0", "n_nuclei", "tissue"])
    require_stage_output(ref_dir / ReferenceSegmentationFolder.COUNTS, ReferenceSegmentationFolder.stage)

    def one(name: str) -> dict[str, float]:
        truth = load_labels(patches.labels / f"{name}.npz")["inst_map"]
        pred = load_labels(ref_dir / f"{name}.npz")["inst_map"]
        return patch_agreement(truth, pred, radius_px, match_iou)

    rows = []
    with ThreadPoolExecutor(workers) as pool:
        for i, r in enumerate(pool.map(one, table["name"].tolist())):
            rows.append(r)
            if progress and (i + 1) % 256 == 0:
                progress(i + 1, len(table))
    metrics = pd.DataFrame(rows, index=table.index, columns=["n_truth", "n_pred", *METRICS, "tp", "fp", "fn"])
    out = pd.concat([table, metrics.rename(columns={"n_pred": "n_ref_nuclei"}).drop(columns="n_truth")], axis=1)
    reasons = {"low_jaccard": out["jaccard"] < flag_below_jaccard}  # NaN (undefined) is never flagged
    if focus_ratio_below is not None and ink_above is not None:
        measured = artefacts.measure_patches(patches.images, out["name"], workers)
        found = artefacts.flag_artefacts(measured.set_axis(out.index), focus_ratio_below, ink_above)
        out[["focus", "focus_ratio", "ink_fraction"]] = found[["focus", "focus_ratio", "ink_fraction"]]
        reasons |= {"out_of_focus": found["out_of_focus"], "ink": found["ink"]}
    flags = pd.DataFrame(reasons)
    out["flagged"] = flags.any(axis=1)
    out["flag_reasons"] = [",".join(r for r, on in zip(flags.columns, row, strict=True) if on)
                           for row in flags.itertuples(index=False)]
    return out


def distribution_summary(frame: pd.DataFrame) -> dict:
    """Median / quartiles of each metric, the defined count and the flagged fraction."""
    out: dict = {"n_patches": len(frame), "n_flagged": int(frame["flagged"].sum()),
                 "frac_flagged": float(frame["flagged"].mean()) if len(frame) else 0.0}
    if "flag_reasons" in frame:
        named = frame["flag_reasons"].str.split(",")
        out["n_flagged_by_reason"] = {r: int(named.apply(lambda names, r=r: r in names).sum()) for r in FLAG_REASONS}
    for m in METRICS:
        v = frame[m].dropna()
        out[m] = {"n_defined": len(v)} | ({} if v.empty else {
            "median": round(float(v.median()), 4), "q25": round(float(v.quantile(0.25)), 4),
            "q75": round(float(v.quantile(0.75)), 4), "mean": round(float(v.mean()), 4)})
    return out


def histogram_png(frame: pd.DataFrame, path: Path, title: str) -> None:
    """Histograms of the agreement metrics as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(11, 2.6))
    for ax, m in zip(axes, ("dice", "jaccard", "bpq", "det_f1"), strict=True):
        ax.hist(frame[m].dropna(), bins=20, range=(0, 1), color="#4477aa")
        ax.set_title(m)
        ax.set_xlim(0, 1)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


QC_COLUMNS = ["slide_id", "magnification", "patch_id", "x0", "y0", "n_nuclei", "dice", "jaccard", "bpq", "det_f1",
              "flagged", "focus_ratio", "ink_fraction", "flag_reasons"]   # the lineage table patch_qc


@dataclass(frozen=True)
class SlideAgreement:
    """``segmentation_agreement`` of one slide: every patch of both magnifications, and per magnification
    the distribution summary (or why it was skipped) that ``summary.json`` holds.
    """

    table: pd.DataFrame
    summary: dict[str, dict]            # "agreement_<mag>" -> distribution_summary (or n_patches 0 and "skipped")

    def qc_rows(self) -> pd.DataFrame:
        return self.table[QC_COLUMNS]


def write_slide_agreement(slide_id: str, patch_dirs: Mapping[str, Path], reference_dir: Path, he_path: Path, out: Path,
                          cfg: AgreementConfig, workers: int,
                          log: Callable[[str], None] = lambda _msg: None) -> SlideAgreement:
    """Agreement per patch at every magnification, with histograms and a quality map per magnification."""
    folder = AgreementFolder(out)
    frames: list[pd.DataFrame] = []
    summary: dict[str, dict] = {}
    for mag, pdir in patch_dirs.items():
        ps = json.loads(require_stage_output(PatchesFolder(pdir).summary, pdir.name).read_text())
        if "skipped" in ps:  # e.g. no 40x level on a 20x-only scan: nothing to compare, not a failure
            log(f"{slide_id} {mag}: skipped ({ps['skipped']})")
            summary[f"agreement_{mag}"] = {"n_patches": 0, "n_flagged": 0, "frac_flagged": 0.0, "skipped": ps["skipped"]}
            continue
        frame = slide_agreement(pdir, ReferenceSegmentationFolder(reference_dir).magnification(mag),
                                cfg.detection_radius_px[mag], cfg.match_iou, cfg.flag_below_jaccard, workers,
                                focus_ratio_below=cfg.flag_focus_ratio_below, ink_above=cfg.flag_ink_above)
        frames.append(frame)
        dist = distribution_summary(frame)
        histogram_png(frame, folder.distributions(mag), f"{slide_id} {mag}")
        lv = PatchLevel(mag, ps["level"], ps["downsample"], ps["um_per_px"])
        draw_patch_overview(he_path, open_pyramid(he_path), frame, lv, ps["size_px"], folder.quality_map(mag),
                            values=frame["jaccard"].to_numpy())
        by_reason = ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in dist["n_flagged_by_reason"].items())
        log(f"{slide_id} {mag}: {dist['n_flagged']}/{dist['n_patches']} patches flagged ({by_reason}); "
            f"median Jaccard {dist['jaccard'].get('median', float('nan'))}")
        summary[f"agreement_{mag}"] = dist
    if not frames:
        raise InputError(next(iter(patch_dirs.values())), "no magnification has patches "
                         "(all skipped: the scan is coarser than 20x)", "scan the slide at 20x or 40x")
    table = pd.concat(frames, ignore_index=True)
    table.to_parquet(folder.agreement)
    folder.summary.write_text(json.dumps(summary, indent=2))
    return SlideAgreement(table, summary)


def patch_quality_failures(summary: Mapping[str, dict], max_frac_flagged: float) -> list[str]:
    """Magnifications whose fraction of flagged patches exceeds the threshold, as sentences."""
    out = []
    for key, dist in sorted(summary.items()):
        mag = key.removeprefix("agreement_")
        if "skipped" in dist:
            continue
        if dist["n_patches"] == 0:
            out.append(f"{mag}: no patches to assess")
        elif dist["frac_flagged"] > max_frac_flagged:
            out.append(f"{mag}: {dist['frac_flagged']:.1%} of {dist['n_patches']} patches flagged "
                       f"(> {max_frac_flagged:.0%})")
    return out
