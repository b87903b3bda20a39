"""H&E -> Xenium registration: apply, refine or estimate the affine, and measure it in µm.

Transforms are 3x3 matrices mapping H&E level-0 pixels to Xenium morphology pixels
(the Xenium Explorer convention); µm = morphology px x pixel size. Everything works on
nucleus point sets (H&E nuclei detected on a low-resolution level by colour
deconvolution, Xenium nucleus centroids), never on whole full-resolution images: the
detected points are re-measured on level 0 around each point (``_level0``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from sthelar_platform.core.config import NonrigidConfig, RegistrationConfig
from sthelar_platform.core.displacement import DisplacementField, fit_field
from sthelar_platform.core.errors import InputError
from sthelar_platform.core.imaging import open_pyramid, read_level_region
from sthelar_platform.registration import _density as density

DIHEDRAL = [np.array(m, float) for m in ([[1, 0], [0, 1]], [[0, -1], [1, 0]], [[-1, 0], [0, -1]], [[0, 1], [-1, 0]],
                                         [[-1, 0], [0, 1]], [[0, 1], [1, 0]], [[1, 0], [0, -1]], [[0, -1], [-1, 0]])]
FIX_CSV = "export the alignment again from Xenium Explorer (3 lines of 3 numbers: H&E px -> morphology px), or omit it to register automatically"


@dataclass(frozen=True)
class RegistrationQC:
    source: str  # csv / refined / automatic
    median_residual_um: float
    p90_residual_um: float
    matched_fraction: float
    n_he_nuclei: int
    n_xenium_nuclei: int
    transform: list[list[float]]  # H&E px -> morphology px
    residual_grid_um: list[list[float | None]]  # median residual per region (rows = y), after the affine
    n_level0_pairs: int = 0  # pairs of the final fit whose H&E centroid was re-measured on level 0
    # non-rigid refinement (None: not tried, or it did not improve the match enough to be kept)
    nonrigid_field: dict | None = None            # core.displacement.DisplacementField.to_dict(), µm
    nonrigid_median_residual_um: float | None = None
    nonrigid_p90_residual_um: float | None = None
    nonrigid_matched_fraction: float | None = None
    nonrigid_max_displacement_um: float | None = None
    nonrigid_note: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def read_alignment_csv(path: str | Path, expected_scale: float | None = None, tolerance: float = 0.5) -> np.ndarray:
    """Parse and validate a Xenium Explorer alignment CSV (a header line is accepted)."""
    path = Path(path)
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read alignment CSV ({exc})", FIX_CSV) from exc
    rows = []
    for ln in lines:
        parts = [p.strip().strip('"') for p in ln.split(",")]
        try:
            rows.append([float(p) for p in parts])
        except ValueError:
            if rows or len(lines) != 4:  # only a single leading header line is allowed
                raise InputError(path, f"non-numeric line {ln!r}", FIX_CSV) from None
    m = np.array(rows, dtype=float) if rows and len({len(r) for r in rows}) == 1 else None
    if m is None or m.shape != (3, 3):
        raise InputError(path, f"expected a 3x3 matrix, found {len(rows)} rows of {sorted({len(r) for r in rows})} values", FIX_CSV)
    if not np.isfinite(m).all():
        raise InputError(path, "matrix has non-finite values", FIX_CSV)
    if not np.allclose(m[2], [0, 0, 1], atol=1e-6):
        raise InputError(path, f"last row is {m[2].tolist()}, expected [0, 0, 1] for an affine transform", FIX_CSV)
    det = np.linalg.det(m[:2, :2])
    if abs(det) < 1e-9:
        raise InputError(path, "matrix is not invertible (determinant 0)", FIX_CSV)
    if expected_scale is not None:
        scale = np.sqrt(abs(det))
        if not (1 - tolerance) * expected_scale <= scale <= (1 + tolerance) * expected_scale:
            raise InputError(path, f"matrix scale {scale:.3f} is far from the pixel-size ratio {expected_scale:.3f} "
                             "(H&E of another magnification, or another slide's alignment?)", FIX_CSV)
    return m


def detection_level(info, target_um: float, pixel_size_um: float | None = None) -> tuple[int, float]:
    """Pyramid level whose pixel size is closest to ``target_um`` and that pixel size."""
    base = pixel_size_um or info.pixel_size_um or 0.25
    best, best_px = 0, base
    for i in range(len(info.level_shapes)):
        px = base * info.downsample(i)
        if abs(np.log(px / target_um)) < abs(np.log(best_px / target_um)):
            best, best_px = i, px
    return best, best_px


def hematoxylin_eosin(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 2) hematoxylin and eosin optical densities by colour deconvolution (Ruifrok & Johnston)."""
    from skimage.color import rgb2hed

    return rgb2hed(rgb)[..., :2].astype(np.float32)


def hematoxylin(rgb: np.ndarray) -> np.ndarray:
    """Hematoxylin optical density by colour deconvolution (Ruifrok & Johnston)."""
    return hematoxylin_eosin(rgb)[..., 0]


def detect_he_nuclei(he_path: str | Path, target_um: float = 0.5, sigma_um: float = 1.2, min_distance_um: float = 3.0,
                     tile: int = 2048, pixel_size_um: float | None = None) -> np.ndarray:
    """Nucleus centroids (level-0 H&E px), detected tile by tile on a low-resolution level.

    ``pixel_size_um`` overrides the file's own (a scan whose pixel size is being guessed).
    """
    from skimage.feature import peak_local_max

    info = open_pyramid(he_path)
    level, px = detection_level(info, target_um, pixel_size_um)
    h, w = info.level_shapes[level][:2]
    down = info.downsample(level)
    sigma = sigma_um / px
    min_d = max(1, int(round(min_distance_um / px)))
    pad = int(4 * sigma) + min_d
    found = []
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            y0, x0 = max(0, y - pad), max(0, x - pad)
            win = read_level_region(he_path, level, y0, x0, min(h, y + tile + pad) - y0, min(w, x + tile + pad) - x0)
            hem = ndimage.gaussian_filter(hematoxylin(win), sigma)
            if hem.max() <= 0:
                continue
            thr = max(0.02, float(np.percentile(hem, 50)) + 0.5 * float(hem.std()))
            pk = peak_local_max(hem, min_distance=min_d, threshold_abs=thr, exclude_border=False)
            gy, gx = pk[:, 0] + y0, pk[:, 1] + x0
            own = (gy >= y) & (gy < y + tile) & (gx >= x) & (gx < x + tile)
            found.append(np.column_stack([gx[own], gy[own]]))
    pts = np.concatenate(found) if found else np.zeros((0, 2))
    return (pts + 0.5) * down


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 3x3 affine to an (n, 2) array of points."""
    return pts @ m[:2, :2].T + m[:2, 2]


def fit_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares affine mapping ``src`` points onto ``dst``."""
    a = np.column_stack([src, np.ones(len(src))])
    sol, *_ = np.linalg.lstsq(a, dst, rcond=None)
    m = np.eye(3)
    m[:2, :] = sol.T
    return m


def _mutual_pairs(moved: np.ndarray, tree: cKDTree, target: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d, j = tree.query(moved, distance_upper_bound=radius)
    ok = np.isfinite(d)
    i = np.flatnonzero(ok)
    j = j[ok]
    _, back_i = cKDTree(moved).query(target[j])
    mutual = back_i == i
    return i[mutual], j[mutual], d[ok][mutual]


def refine(m: np.ndarray, he_pts: np.ndarray, xen_px: np.ndarray, morph_um: float, radii_um: list[float],
           ransac_iterations: int = 600, seed: int = 0) -> np.ndarray:
    """RANSAC on tentative nearest-neighbour matches, then ICP with shrinking radii."""
    tree = cKDTree(xen_px)
    rng = np.random.default_rng(seed)
    i, j, _ = _mutual_pairs(apply(m, he_pts), tree, xen_px, radii_um[0] / morph_um)
    if len(i) >= 3:
        src, dst = he_pts[i], xen_px[j]
        tol = radii_um[-1] / morph_um
        best, best_n = m, (np.linalg.norm(apply(m, src) - dst, axis=1) < tol).sum()
        for _ in range(ransac_iterations):
            s = rng.choice(len(i), 3, replace=False)
            a = np.column_stack([src[s], np.ones(3)])
            if abs(np.linalg.det(a)) < 1e-6:
                continue
            cand = fit_affine(src[s], dst[s])
            n = (np.linalg.norm(apply(cand, src) - dst, axis=1) < tol).sum()
            if n > best_n:
                best, best_n = cand, n
        m = best
    for r in radii_um:
        for _ in range(5):
            i, j, _ = _mutual_pairs(apply(m, he_pts), tree, xen_px, r / morph_um)
            if len(i) < 3:
                break
            new = fit_affine(he_pts[i], xen_px[j])
            if np.abs(new - m).max() < 1e-4:
                m = new
                break
            m = new
    return m


def _rotation(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def automatic_candidates(rotations: tuple[float, float, float], scales: tuple[float, float, float]) -> list[np.ndarray]:
    """Every 90° turn and flip x rotation x scale (H&E µm -> Xenium µm linear parts)."""
    return [s * _rotation(th) @ d for d in DIHEDRAL
            for th in np.arange(rotations[0], rotations[1] + 1e-9, rotations[2])
            for s in np.arange(scales[0], scales[1] + 1e-9, scales[2])]


def local_candidates(lin_um: np.ndarray, max_deg: float = 3.0, step_deg: float = 0.5, max_scale: float = 0.03,
                     step_scale: float = 0.01) -> list[np.ndarray]:
    """Small rotations and scalings around a given linear part (to refine an alignment CSV)."""
    return [s * _rotation(th) @ lin_um for th in np.arange(-max_deg, max_deg + 1e-9, step_deg)
            for s in np.arange(1 - max_scale, 1 + max_scale + 1e-9, step_scale)]


def coarse_search(he_pts: np.ndarray, he_um: float, xen_um: np.ndarray, morph_um: float, bin_um: float,
                  candidates: list[np.ndarray]) -> np.ndarray:
    """Best linear candidate + translation by FFT cross-correlation of nucleus density maps.

    Returns the H&E px -> morphology px matrix.
    """
    lo = xen_um.min(0) - 200
    hi = xen_um.max(0) + 200
    shape = density.fast_shape((int(np.ceil((hi - lo)[1] / bin_um)) * 2, int(np.ceil((hi - lo)[0] / bin_um)) * 2))
    origin = lo - (np.array(shape[::-1]) * bin_um - (hi - lo)) / 2
    transfer = density.gaussian_transfer(shape, 1.0)
    ref_spec = density.smoothed_spectrum(density.histogram(xen_um, origin, shape, bin_um), transfer)
    center = (lo + hi) / 2
    mean_he = (he_pts * he_um).mean(0)
    he_c = he_pts * he_um - mean_he
    best: tuple[np.ndarray, np.ndarray] | None = None
    best_score = -np.inf
    for lin in candidates:
        spec = density.smoothed_spectrum(density.histogram(he_c @ lin.T + center, origin, shape, bin_um), transfer)
        cc = density.cross_correlation(ref_spec, spec, shape)
        k = int(np.argmax(cc))
        score = cc.flat[k] / (density.spectrum_norm(spec, shape[1]) + 1e-9)
        if score > best_score:
            dy, dx = np.unravel_index(k, shape)
            dy = dy - shape[0] if dy > shape[0] // 2 else dy
            dx = dx - shape[1] if dx > shape[1] // 2 else dx
            best_score, best = score, (lin, center + np.array([dx, dy]) * bin_um)
    if best is None:
        raise ValueError("coarse_search needs at least one candidate transform")
    lin, shifted_center = best
    # Xenium µm = lin @ (H&E px * he_um - mean_he) + shifted_center, expressed as H&E px -> morphology px
    m = np.eye(3)
    m[:2, :2] = lin * he_um / morph_um
    m[:2, 2] = (shifted_center - lin @ mean_he) / morph_um
    return m


def finer_search(m0: np.ndarray, he_pts: np.ndarray, he_um: float, xen_um: np.ndarray, morph_um: float,
                 cfg: RegistrationConfig) -> np.ndarray:
    """The coarse grid's best cell searched again at a quarter of its steps and half its bin.

    Half a coarse step (1° of rotation, 1.25 % of scale) moves the edge of a 7 mm section by 60 µm,
    more than the RANSAC matching radius: on the bench slide the coarse estimate alone ended 18 µm
    off after refinement.
    """
    lin_um = m0[:2, :2] * morph_um / he_um
    rot_step, scale_step = float(cfg.coarse_rotations_deg[2]), float(cfg.coarse_scales[2])
    candidates = local_candidates(lin_um, max_deg=rot_step / 2, step_deg=rot_step / 8,
                                  max_scale=scale_step / 2, step_scale=scale_step / 8)
    return coarse_search(he_pts, he_um, xen_um, morph_um, cfg.coarse_bin_um / 2, candidates)


def measure(m: np.ndarray, he_pts: np.ndarray, xen_px: np.ndarray, morph_um: float, radius_um: float, source: str,
            grid: int = 4) -> RegistrationQC:
    """Residuals (µm) between matched H&E nuclei and Xenium nuclei, overall and per region."""
    tree = cKDTree(xen_px)
    i, j, d = _mutual_pairs(apply(m, he_pts), tree, xen_px, radius_um / morph_um)
    res = d * morph_um
    lo, hi = xen_px.min(0), xen_px.max(0) + 1e-9
    cells = np.floor((xen_px[j] - lo) / (hi - lo) * grid).astype(int) if len(j) else np.zeros((0, 2), int)
    grid_med = [[(float(np.median(res[(cells[:, 1] == gy) & (cells[:, 0] == gx)]))
                  if ((cells[:, 1] == gy) & (cells[:, 0] == gx)).any() else None) for gx in range(grid)] for gy in range(grid)]
    return RegistrationQC(
        source=source, median_residual_um=float(np.median(res)) if len(res) else float("inf"),
        p90_residual_um=float(np.percentile(res, 90)) if len(res) else float("inf"),
        matched_fraction=len(j) / max(len(xen_px), 1), n_he_nuclei=len(he_pts), n_xenium_nuclei=len(xen_px),
        transform=m.tolist(), residual_grid_um=grid_med)


def final_fit(m: np.ndarray, he_pts: np.ndarray, level0: np.ndarray, xen_px: np.ndarray, morph_um: float,
              radius_um: float, min_pairs: int = 10) -> tuple[np.ndarray, int]:
    """Least-squares refit on the matched pairs whose H&E point is a level-0 centroid.

    The other points only know their position to a detection-level pixel, and mixing them in moves
    the fit by ~0.1 µm (benchmarks/results/registration_variants.json). Returns ``m`` unchanged when
    fewer than ``min_pairs`` such pairs exist.
    """
    tree, n = cKDTree(xen_px), 0
    for _ in range(3):
        i, j, _ = _mutual_pairs(apply(m, he_pts), tree, xen_px, radius_um / morph_um)
        keep = level0[i]
        if keep.sum() < min_pairs:
            break
        m, n = fit_affine(he_pts[i[keep]], xen_px[j[keep]]), int(keep.sum())
    return m, n


def register(he_pts: np.ndarray, he_um: float, xen_um: np.ndarray, morph_um: float, cfg: RegistrationConfig,
             csv_matrix: np.ndarray | None = None, level0: np.ndarray | None = None) -> RegistrationQC:
    """Refine a given matrix, or estimate one when none is given; always measure the result.

    ``level0`` marks the H&E points re-measured on the full-resolution level: when given, the last
    fit uses only those (see :func:`final_fit`).
    """
    xen_px = xen_um / morph_um
    if len(he_pts) < 10 or len(xen_px) < 10:
        raise ValueError(f"too few nuclei to register ({len(he_pts)} in H&E, {len(xen_px)} in Xenium)")  # register_slide
        # names the files first
    if csv_matrix is not None:
        candidates = local_candidates(csv_matrix[:2, :2] * morph_um / he_um)
        source = "refined"
    else:
        candidates = automatic_candidates(_floats3(cfg.coarse_rotations_deg), _floats3(cfg.coarse_scales))
        source = "automatic"
    m0 = coarse_search(he_pts, he_um, xen_um, morph_um, cfg.coarse_bin_um, candidates)
    radii = cfg.coarse_radii_um + list(cfg.icp_radii_um)
    if csv_matrix is None:
        m0 = finer_search(m0, he_pts, he_um, xen_um, morph_um, cfg)
        m = refine(m0, he_pts, xen_px, morph_um, radii, cfg.ransac_iterations)
    else:
        # Both starts are refined and the better match kept: before refinement, a CSV 20 µm off and a
        # coarse estimate ~6 µm off both match only ~5-12 % of nuclei within 3 µm, too few to rank them.
        fits = [refine(start, he_pts, xen_px, morph_um, radii, cfg.ransac_iterations) for start in (csv_matrix, m0)]
        m = max(fits, key=lambda f: measure(f, he_pts, xen_px, morph_um, cfg.match_radius_um, source).matched_fraction)
    n_level0 = 0
    if level0 is not None:
        m, n_level0 = final_fit(m, he_pts, level0, xen_px, morph_um, cfg.icp_radii_um[-1])
    return replace(measure(m, he_pts, xen_px, morph_um, cfg.match_radius_um, source), n_level0_pairs=n_level0)


def _residuals_um(moved_um: np.ndarray, xen_um: np.ndarray, radius_um: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _mutual_pairs(moved_um, cKDTree(xen_um), xen_um, radius_um)


def refine_nonrigid(qc: RegistrationQC, he_pts: np.ndarray, xen_um: np.ndarray, morph_um: float, match_radius_um: float,
                    cfg: NonrigidConfig, level0: np.ndarray | None = None) -> RegistrationQC:
    """Fit a smooth displacement field on top of the affine from matched nuclei, and keep it if it helps.

    Sections stretch and fold: a few µm that vary across the tissue, which no affine fits. Pairs
    within ``search_radius_um`` of the affine give a first field (per-cell medians); pairs
    within the match radius of the warped points give the final one. It is kept when the median
    residual falls by at least ``min_improvement`` without fewer matches, so an affine-exact slide
    stays affine. Only level-0 centroids are used when there are enough of them.
    """
    if cfg.method == "none":
        return qc
    pts = he_pts[level0] if level0 is not None and level0.sum() >= 50 else he_pts
    q = apply(np.asarray(qc.transform, float), pts) * morph_um
    _, _, before = _residuals_um(q, xen_um, match_radius_um)
    i, j, _ = _residuals_um(q, xen_um, cfg.search_radius_um)
    if len(i) < cfg.min_pairs:
        return replace(qc, nonrigid_note=f"not fitted: {len(i)} pairs within {cfg.search_radius_um} µm")
    field = fit_field(q[i], xen_um[j], cfg.spacing_um, cfg.min_pairs, cfg.smoothing_cells)
    i, j, _ = _residuals_um(field.forward(q), xen_um, match_radius_um)
    if len(i) >= cfg.min_pairs:
        field = fit_field(q[i], xen_um[j], cfg.spacing_um, cfg.min_pairs, cfg.smoothing_cells)
    _, _, after = _residuals_um(field.forward(q), xen_um, match_radius_um)
    # reported like ``measure`` reports the affine: over every detected H&E nucleus
    _, _, after_all = _residuals_um(field.forward(apply(np.asarray(qc.transform, float), he_pts) * morph_um), xen_um,
                                    match_radius_um)
    med_before = float(np.median(before)) if len(before) else float("inf")
    med_after = float(np.median(after)) if len(after) else float("inf")
    largest = float(field.magnitude_um().max())
    kept = med_after <= (1 - cfg.min_improvement) * med_before and len(after) >= len(before)
    note = (f"kept: median residual {med_before:.2f} -> {med_after:.2f} µm, displacement up to {largest:.1f} µm" if kept
            else f"not kept: median residual {med_before:.2f} -> {med_after:.2f} µm (needs a {cfg.min_improvement:.0%} drop)")
    return replace(qc, nonrigid_field=field.to_dict() if kept else None,
                   nonrigid_median_residual_um=float(np.median(after_all)) if len(after_all) else float("inf"),
                   nonrigid_p90_residual_um=float(np.percentile(after_all, 90)) if len(after_all) else float("inf"),
                   nonrigid_matched_fraction=len(after_all) / max(len(xen_um), 1),
                   nonrigid_max_displacement_um=largest, nonrigid_note=note)


def final_residuals(qc: RegistrationQC) -> tuple[float, float, float]:
    """Matched fraction, median and p90 residual (µm) of the mapping later stages use (with a kept field)."""
    if (qc.nonrigid_field and qc.nonrigid_matched_fraction is not None and qc.nonrigid_median_residual_um is not None
            and qc.nonrigid_p90_residual_um is not None):
        return qc.nonrigid_matched_fraction, qc.nonrigid_median_residual_um, qc.nonrigid_p90_residual_um
    return qc.matched_fraction, qc.median_residual_um, qc.p90_residual_um


def _floats3(values: tuple[float, float, float]) -> tuple[float, float, float]:
    return float(values[0]), float(values[1]), float(values[2])


def warp_of(qc: RegistrationQC) -> DisplacementField | None:
    """The kept non-rigid field of a registration (µm, applied after the affine), or None."""
    return DisplacementField.from_dict(qc.nonrigid_field) if qc.nonrigid_field else None


def transform_error_um(m: np.ndarray, truth: np.ndarray, he_pts: np.ndarray, morph_um: float) -> np.ndarray:
    """Per-point error (µm) of ``m`` against the true matrix, evaluated at H&E points."""
    return np.linalg.norm(apply(m, he_pts) - apply(truth, he_pts), axis=1) * morph_um
