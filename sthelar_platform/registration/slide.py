"""The per-slide registration stage: ingested Xenium + H&E in, a measured transform out.

Wraps the point-set algorithms of :mod:`sthelar_platform.registration` with the decisions
a slide needs: validate the alignment CSV against the H&E pixel size, refine it, fall
back to the automatic estimate when the CSV does not match, judge the result against the
configured thresholds, and leave pictures a person can check by eye.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import polars as pl

from sthelar_platform.core.config import RegistrationConfig
from sthelar_platform.core.displacement import DisplacementField
from sthelar_platform.core.errors import InputError, require_stage_output
from sthelar_platform.core.imaging import open_pyramid, read_level, read_level_region, thumbnail_level
from sthelar_platform.core.thumbnails import save_png
from sthelar_platform.core.warehouse import HEImageFolder, RegistrationFolder, XeniumSlideFolder
from sthelar_platform.ingest.he_image import magnification_of
from sthelar_platform.registration import transform as reg
from sthelar_platform.registration._level0 import refine_on_level0
from sthelar_platform.registration.record import SlideRegistration


def nucleus_centroids_um(boundaries: str | Path) -> np.ndarray:
    """Area centroids (µm) of the nucleus polygons, one per nucleus (shoelace formula, vectorized).

    A polygon is a (cell_id, label_id) run: a cell with two nuclei gives two centroids, never one of a
    merged ring.
    """
    lf = pl.scan_parquet(boundaries)
    key = ["cell_id", "label_id"] if "label_id" in lf.collect_schema().names() else ["cell_id"]
    # float64 and a per-polygon origin: float32 cross products of µm coordinates cancel catastrophically
    lf = lf.with_row_index("_row").with_columns(
        ox=pl.col("vertex_x").cast(pl.Float64).first().over(key, order_by="_row"),
        oy=pl.col("vertex_y").cast(pl.Float64).first().over(key, order_by="_row"),
    ).with_columns(x=pl.col("vertex_x").cast(pl.Float64) - pl.col("ox"), y=pl.col("vertex_y").cast(pl.Float64) - pl.col("oy"))
    nxt = [pl.col(c).shift(-1).over(key, order_by="_row").alias(f"n{c}") for c in ("x", "y")]
    edges = lf.with_columns(nxt).drop_nulls(["nx", "ny"]).with_columns(
        cross=pl.col("x") * pl.col("ny") - pl.col("nx") * pl.col("y"))
    agg = edges.group_by(key).agg(
        a=pl.col("cross").sum() / 2,
        sx=((pl.col("x") + pl.col("nx")) * pl.col("cross")).sum(),
        sy=((pl.col("y") + pl.col("ny")) * pl.col("cross")).sum(),
        mx=pl.col("x").mean(), my=pl.col("y").mean(), ox=pl.col("ox").first(), oy=pl.col("oy").first(),
    ).collect()
    a = agg["a"].to_numpy()
    ok = np.abs(a) > 1e-9
    safe = np.where(ok, a, 1.0)
    x = np.where(ok, agg["sx"].to_numpy() / (6 * safe), agg["mx"].to_numpy())
    y = np.where(ok, agg["sy"].to_numpy() / (6 * safe), agg["my"].to_numpy())
    return np.column_stack([x + agg["ox"].to_numpy(), y + agg["oy"].to_numpy()])


def quality_failures(qc: reg.RegistrationQC, implied_px: float, he_px: float, he_px_source: str, cfg: RegistrationConfig,
                     magnifications: Mapping[str, tuple[float, float]]) -> list[str]:
    """Why a registration is not good enough (empty when it passes the thresholds).

    With a kept non-rigid field, the residuals after it are judged: that is the mapping every later
    stage uses, and a deformed section the field corrects is valid data.
    """
    out = []
    matched, median, p90 = reg.final_residuals(qc)
    if matched < cfg.min_matched_fraction:
        out.append(f"only {matched:.1%} of Xenium nuclei matched an H&E nucleus (minimum "
                   f"{cfg.min_matched_fraction:.0%}): the H&E may belong to another slide, not cover the tissue, "
                   "or have another magnification than its pixel size says")
    if not median <= cfg.max_median_residual_um:
        out.append(f"median residual {median:.2f} µm exceeds {cfg.max_median_residual_um} µm")
    if not p90 <= cfg.max_p90_residual_um:
        out.append(f"90th-percentile residual {p90:.2f} µm exceeds {cfg.max_p90_residual_um} µm "
                   "(local misalignment: see the residual map)")
    if he_px_source == "metadata" and abs(implied_px / he_px - 1) > cfg.pixel_size_tolerance:
        out.append(f"the fitted transform implies {implied_px:.3f} µm/px ({magnification_of(implied_px, magnifications)}) but the H&E "
                   f"metadata says {he_px:.3f} µm/px ({magnification_of(he_px, magnifications)})")
    return out


def _implied_pixel_size(m: np.ndarray | list[list[float]], morph_um: float) -> float:
    return float(np.sqrt(abs(np.linalg.det(np.asarray(m)[:2, :2]))) * morph_um)


def detect_nuclei(he_path: Path, cfg: RegistrationConfig, pixel_size_um: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Detected H&E nuclei (level-0 px) and which of them were re-measured on level 0 (None: not asked)."""
    pts = reg.detect_he_nuclei(he_path, cfg.detection_um_per_px, cfg.detection_sigma_um,
                               cfg.detection_min_distance_um, pixel_size_um=pixel_size_um)
    if len(pts) < cfg.min_he_nuclei:
        raise InputError(he_path, f"only {len(pts)} nuclei detected in the H&E (need {cfg.min_he_nuclei})",
                         "check that the H&E shows this slide's tissue and is not blank or out of focus")
    if not cfg.level0_window_um:
        return pts, None
    refined, _ = refine_on_level0(he_path, pts, pixel_size_um, cfg.level0_window_um, cfg.level0_sigma_um)
    return refined, np.any(refined != pts, axis=1)


def _widened(cfg: RegistrationConfig) -> RegistrationConfig:
    return cfg.model_copy(update={"coarse_scales": tuple(cfg.unknown_pixel_size_scales)})


def _guess_pixel_size(he_path: Path, xen_um: np.ndarray, morph_um: float, cfg: RegistrationConfig,
                      notes: list[str]) -> tuple[float, tuple[np.ndarray, np.ndarray | None]]:
    """The candidate pixel size (and its detected nuclei) whose automatic registration matches most nuclei."""
    tried = []
    for px in cfg.unknown_pixel_size_candidates_um:
        try:
            found = detect_nuclei(he_path, cfg, px)
            q = reg.register(found[0], px, xen_um, morph_um, _widened(cfg), level0=found[1])
        except InputError:
            continue
        tried.append((q.matched_fraction, px, found))
    if not tried:
        raise InputError(he_path, "no nuclei found at any candidate pixel size "
                         f"{list(cfg.unknown_pixel_size_candidates_um)} µm/px",
                         "check the H&E shows this slide's tissue; or give its pixel size in the OME metadata")
    _, px, pts = max(tried, key=lambda t: t[0])
    notes.append("H&E has no pixel size metadata; tried " + ", ".join(f"{p} µm/px ({f:.0%} matched)" for f, p, _ in tried))
    return float(px), pts


def register_slide(xenium_dir: str | Path, he_dir: str | Path, alignment_csv: str | Path | None, out_dir: str | Path,
                   cfg: RegistrationConfig, magnifications: Mapping[str, tuple[float, float]],
                   overlay_px: int = 512) -> SlideRegistration:
    """Register one slide's H&E onto its Xenium nuclei and write the evidence into ``out_dir``.

    Writes ``registration.json``, ``transform.csv`` (Xenium Explorer format, H&E px ->
    morphology px), ``he_nuclei.parquet``, ``overlay.png`` (whole slide), ``overlay_zoom.png``
    (full resolution) and ``residual_map.png``.
    """
    xen, he, out = XeniumSlideFolder(xenium_dir), HEImageFolder(he_dir), RegistrationFolder(out_dir)
    for path, stage in ((xen.nucleus_boundaries, xen.stage), (xen.summary, xen.stage), (he.image, he.stage),
                        (he.summary, he.stage)):
        require_stage_output(path, stage)
    morph_um = float(json.loads(xen.summary.read_text())["pixel_size_um"])
    he_path = he.image
    he_meta_px = json.loads(he.summary.read_text()).get("pixel_size_um")
    he_px, px_source = (float(he_meta_px), "metadata") if he_meta_px else (float(cfg.assumed_he_um_per_px), "assumed")

    xen_um = nucleus_centroids_um(xen.nucleus_boundaries)
    if len(xen_um) < 10:
        raise InputError(xen.nucleus_boundaries, f"only {len(xen_um)} Xenium nuclei: too few to register the H&E on",
                         "check that segmentation ran on this region (a registration needs at least 10 nuclei)")
    notes: list[str] = []
    if px_source == "assumed":  # no pixel size: try each usual scanner size with a wider scale search
        he_px, (he_pts, level0) = _guess_pixel_size(he_path, xen_um, morph_um, cfg, notes)
    else:
        he_pts, level0 = detect_nuclei(he_path, cfg, he_px)

    csv_matrix, csv_q = None, None
    if alignment_csv is not None:
        expected = he_px / morph_um if px_source == "metadata" else None
        csv_matrix = reg.read_alignment_csv(alignment_csv, expected_scale=expected, tolerance=cfg.scale_tolerance)
        csv_q = reg.measure(csv_matrix, he_pts, xen_um / morph_um, morph_um, cfg.match_radius_um, "csv")
    search = _widened(cfg) if px_source == "assumed" else cfg
    def fitted(start: np.ndarray | None) -> reg.RegistrationQC:  # the affine, then a kept non-rigid field if any
        qc = reg.register(he_pts, he_px, xen_um, morph_um, search, csv_matrix=start, level0=level0)
        return reg.refine_nonrigid(qc, he_pts, xen_um, morph_um, cfg.match_radius_um, cfg.nonrigid, level0)

    qc = fitted(csv_matrix)
    failures = quality_failures(qc, _implied_pixel_size(qc.transform, morph_um), he_px, px_source, cfg, magnifications)
    if alignment_csv is not None and csv_matrix is not None and failures and cfg.fallback_to_automatic:
        auto = fitted(None)
        auto_failures = quality_failures(auto, _implied_pixel_size(auto.transform, morph_um), he_px, px_source, cfg, magnifications)
        if not auto_failures:
            notes.append(f"alignment CSV {Path(alignment_csv).name} did not fit ({'; '.join(failures)}); "
                         "replaced by the automatic estimate")
            qc, failures = auto, auto_failures
    if qc.nonrigid_note:
        notes.append(f"non-rigid refinement {qc.nonrigid_note}")
    if px_source == "assumed":
        notes.append(f"H&E has no pixel size metadata; the fit implies {_implied_pixel_size(qc.transform, morph_um):.4f} "
                     "µm/px, used downstream")

    result = SlideRegistration(
        qc=qc, he_pixel_size_um=he_px, he_pixel_size_source=px_source,
        implied_he_pixel_size_um=_implied_pixel_size(qc.transform, morph_um), magnification=magnification_of(he_px, magnifications),
        morphology_pixel_size_um=morph_um, csv_given=alignment_csv is not None,
        csv_median_residual_um=None if csv_q is None else csv_q.median_residual_um,
        csv_matched_fraction=None if csv_q is None else csv_q.matched_fraction, notes=notes, failures=failures,
        n_level0_centroids=0 if level0 is None else int(level0.sum()))
    m = np.array(qc.transform)
    np.savetxt(out.transform_csv, m, delimiter=",", fmt="%.10g")
    pl.DataFrame({"x_px": he_pts[:, 0], "y_px": he_pts[:, 1],
                  "level0": np.zeros(len(he_pts), bool) if level0 is None else level0}).write_parquet(out.he_nuclei)
    draw_overlays(he_path, m, xen.nucleus_boundaries, morph_um, out, overlay_px, result.warp)
    draw_residual_map(qc.residual_grid_um, cfg.max_median_residual_um, out.residual_map)
    out.registration.write_text(result.to_json())
    return result


def _outlines_in_he_px(boundaries: Path, m: np.ndarray, morph_um: float,
                       warp: DisplacementField | None = None) -> list[np.ndarray]:
    """Nucleus outlines mapped into H&E level-0 px (through the non-rigid correction too, when kept)."""
    df = pl.read_parquet(boundaries, columns=["cell_id", "vertex_x", "vertex_y"])
    inv = np.linalg.inv(m)
    xy_um = df.select("vertex_x", "vertex_y").to_numpy()
    if warp is not None:
        xy_um = warp.inverse(xy_um)
    xy = reg.apply(inv, xy_um / morph_um)
    ids = df["cell_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return np.split(xy, starts[1:])


def draw_overlays(he_path: Path, m: np.ndarray, boundaries: Path, morph_um: float, out: RegistrationFolder, max_px: int,
                  warp: DisplacementField | None = None) -> None:
    """Whole-slide thumbnail and a full-resolution crop, both with the Xenium nucleus outlines in green."""
    info = open_pyramid(he_path)
    level = thumbnail_level(info, max_px)
    thumb = np.ascontiguousarray(read_level(he_path, level)[..., :3])
    f = thumb.shape[0] / info.height
    polys = _outlines_in_he_px(boundaries, m, morph_um, warp)
    cv2.polylines(thumb, [np.round(p * f).astype(np.int32) for p in polys], True, (0, 160, 0), 1, cv2.LINE_AA)
    save_png(thumb, out.overlay, max_px=max_px)
    # full-resolution crop around the centre of the Xenium nuclei, where alignment is visible nucleus by nucleus
    centres = np.array([p.mean(0) for p in polys]) if polys else np.array([[info.width / 2, info.height / 2]])
    cx, cy = np.median(centres, axis=0)
    size = min(max_px, info.width, info.height)
    x0 = int(np.clip(cx - size / 2, 0, info.width - size))
    y0 = int(np.clip(cy - size / 2, 0, info.height - size))
    crop = np.ascontiguousarray(read_level_region(he_path, 0, y0, x0, size, size)[..., :3])
    near = [np.round(p - [x0, y0]).astype(np.int32) for p in polys
            if x0 - 50 <= p[0, 0] < x0 + size + 50 and y0 - 50 <= p[0, 1] < y0 + size + 50]
    cv2.polylines(crop, near, True, (0, 200, 0), 1, cv2.LINE_AA)
    save_png(crop, out.overlay_zoom, max_px=max_px)


def draw_residual_map(grid: list[list[float | None]], limit_um: float, path: Path, cell_px: int = 64) -> None:
    """Median residual per region as a heat map (green = 0, red = the threshold or worse; grey = no nuclei)."""
    g = np.array([[np.nan if v is None else v for v in row] for row in grid], float)
    t = np.clip(np.nan_to_num(g, nan=0.0) / limit_um, 0, 1)
    rgb = np.stack([255 * t, 200 * (1 - t), 40 * np.ones_like(t)], -1).astype(np.uint8)
    rgb[np.isnan(g)] = 160
    img = np.ascontiguousarray(np.kron(rgb, np.ones((cell_px, cell_px, 1), np.uint8)))
    for (r, c), v in np.ndenumerate(g):
        if np.isfinite(v):
            cv2.putText(img, f"{v:.2f}", (c * cell_px + 6, r * cell_px + cell_px // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX,
                        0.45, (255, 255, 255), 1, cv2.LINE_AA)
    save_png(img, path, max_px=cell_px * max(g.shape))
