"""Registration accuracy against the known synthetic transform, and bad alignment inputs."""

import json

import numpy as np
import polars as pl
import pytest

from sthelar_platform.core.config import load_categories, load_config, load_synthetic
from sthelar_platform.core.errors import InputError
from sthelar_platform.registration import transform as reg
from sthelar_platform.synth import synthesize_slide
from sthelar_platform.synth.transform import TransformSpec, write_alignment_csv

MORPH_UM, HE_UM = 0.2125, 0.2738
CFG = load_config("pipeline").registration
MAGS = load_config("pipeline").he_image.magnification_um_per_px


def _inputs(folder):
    truth = np.array(json.loads((folder / "truth" / "transform.json").read_text())["he_to_morphology"])
    cells = pl.read_parquet(folder / "truth" / "cells.parquet").filter(pl.col("has_nucleus"))
    xen_um = cells.select("x_um", "y_um").to_numpy()
    he_pts = reg.detect_he_nuclei(next((folder / "he").glob("*.ome.tif")))
    all_he = reg.apply(np.linalg.inv(truth), xen_um / MORPH_UM)  # every cell, in H&E px
    return truth, xen_um, he_pts, all_he


@pytest.fixture(scope="module")
def tiny_inputs(tiny_slide):
    return _inputs(tiny_slide)


def test_csv_path_error_below_half_micron(tiny_slide, tiny_inputs):
    truth, xen_um, he_pts, all_he = tiny_inputs
    m = reg.read_alignment_csv(tiny_slide / "he" / "tiny_he_imagealignment.csv", HE_UM / MORPH_UM)
    qc = reg.register(he_pts, HE_UM, xen_um, MORPH_UM, CFG, csv_matrix=m)
    err = reg.transform_error_um(np.array(qc.transform), truth, all_he, MORPH_UM)
    assert np.median(err) <= 0.5 and qc.source == "refined"
    assert qc.matched_fraction > 0.9 and qc.median_residual_um < CFG.max_median_residual_um


def test_perturbed_csv_is_refined_back(tiny_inputs):
    truth, xen_um, he_pts, all_he = tiny_inputs
    t = np.deg2rad(2.0)
    perturb = np.array([[np.cos(t), -np.sin(t), 20 / MORPH_UM], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    bad = perturb @ truth
    assert np.median(reg.transform_error_um(bad, truth, all_he, MORPH_UM)) > 15
    qc = reg.register(he_pts, HE_UM, xen_um, MORPH_UM, CFG, csv_matrix=bad)
    assert np.median(reg.transform_error_um(np.array(qc.transform), truth, all_he, MORPH_UM)) <= 1.0


@pytest.mark.parametrize("spec", [
    TransformSpec(rotation_deg=-9.0, scale_jitter=0.08, quarter_turns=1, flip=True),
    TransformSpec(rotation_deg=7.5, scale_jitter=-0.08, quarter_turns=3, flip=False),
    TransformSpec(rotation_deg=3.0, scale_jitter=0.0, quarter_turns=2, flip=True),
])
def test_automatic_registration_any_turn_flip_rotation_scale(tmp_path, spec):
    slide = synthesize_slide(tmp_path, "auto", "breast", "tiny", 11, load_synthetic(), load_categories(), transform=spec)
    truth, xen_um, he_pts, all_he = _inputs(slide.folder)
    qc = reg.register(he_pts, HE_UM, xen_um, MORPH_UM, CFG)
    err = reg.transform_error_um(np.array(qc.transform), truth, all_he, MORPH_UM)
    assert qc.source == "automatic" and np.median(err) <= 1.0, (np.median(err), qc.matched_fraction)


def test_alignment_of_another_slide_fails_the_quality_thresholds(tmp_path, tiny_inputs):
    other = synthesize_slide(tmp_path, "other", "skin", "tiny", 5, load_synthetic(), load_categories())
    _, xen_um, he_pts, _ = tiny_inputs
    wrong = reg.read_alignment_csv(other.alignment_csv)
    qc = reg.register(he_pts, HE_UM, xen_um, MORPH_UM, CFG, csv_matrix=wrong)
    assert qc.matched_fraction < CFG.min_matched_fraction or qc.median_residual_um > CFG.max_median_residual_um


@pytest.mark.parametrize(("text", "problem"), [
    ("1,0,0\n0,0,0\n0,0,1\n", "not invertible"),
    ("1,0,nan\n0,1,0\n0,0,1\n", "non-finite"),
    ("1,0\n0,1\n", "expected a 3x3 matrix"),
    ("hello world\n", "non-numeric line"),
    ("1,0,0\n0,1,0\n0,0,1\n1,2,3\n", "expected a 3x3 matrix"),
    ("1,0,0\n0,1,0\n0.1,0,1\n", "last row"),
])
def test_bad_alignment_csv(tmp_path, text, problem):
    p = tmp_path / "align.csv"
    p.write_text(text)
    with pytest.raises(InputError) as e:
        reg.read_alignment_csv(p)
    assert problem in str(e.value) and "align.csv" in str(e.value) and "Fix:" in str(e.value)


def test_header_line_is_accepted(tmp_path):
    p = tmp_path / "align.csv"
    write_alignment_csv(p, np.array([[1.2, 0, 5], [0, 1.2, 7], [0, 0, 1]]))
    p.write_text("a,b,c\n" + p.read_text())
    assert reg.read_alignment_csv(p)[0, 2] == 5


def test_he_at_10x_passed_as_40x_is_caught_by_scale(tiny_slide):
    # a 10x image has 4x larger pixels: its true matrix scale is 4x the 40x pixel-size ratio
    m = reg.read_alignment_csv(tiny_slide / "he" / "tiny_he_imagealignment.csv")
    p = tiny_slide.parent / "x10.csv"
    write_alignment_csv(p, np.diag([4, 4, 1]) @ m)
    with pytest.raises(InputError, match="far from the pixel-size ratio"):
        reg.read_alignment_csv(p, expected_scale=HE_UM / MORPH_UM, tolerance=CFG.scale_tolerance)
    p.unlink()


def test_he_without_tissue_overlap_has_too_few_nuclei(tmp_path):
    import tifffile

    blank = tmp_path / "blank.ome.tif"
    tifffile.imwrite(blank, np.full((1024, 1024, 3), 245, np.uint8), photometric="rgb")
    assert len(reg.detect_he_nuclei(blank)) < 10
    with pytest.raises(ValueError, match="too few nuclei"):  # register_slide names the file before it gets here
        reg.register(np.zeros((0, 2)), HE_UM, np.random.default_rng(0).uniform(0, 100, (50, 2)), MORPH_UM, CFG)


def test_nucleus_centroids_are_polygon_area_centroids(tmp_path):
    from sthelar_platform.registration.slide import nucleus_centroids_um

    # an L-shaped nucleus (area centroid differs from the vertex mean) and a closed square
    l_shape = [(0, 0), (4, 0), (4, 1), (1, 1), (1, 4), (0, 4), (0, 0)]
    square = [(10, 10), (12, 10), (12, 12), (10, 12), (10, 10)]
    # a small nucleus far from the origin, stored as float32 as Xenium does (cancellation trap)
    far = [(6543.25 + x, 6012.5 + y) for x, y in [(0, 0), (3, 0), (3, 2), (0, 2), (0, 0)]]
    rows = [("a", x, y) for x, y in l_shape] + [("b", x, y) for x, y in square] + [("c", x, y) for x, y in far]
    pl.DataFrame(rows, schema={"cell_id": pl.String, "vertex_x": pl.Float32, "vertex_y": pl.Float32},
                 orient="row").write_parquet(tmp_path / "n.parquet")
    c = nucleus_centroids_um(tmp_path / "n.parquet")
    got = {tuple(np.round(p, 4)) for p in c}
    # L = 4x1 bar (centre 2, 0.5) + 1x3 bar (centre 0.5, 2.5): area-weighted centroid (8/7·…)
    cx = (4 * 2 + 3 * 0.5) / 7
    cy = (4 * 0.5 + 3 * 2.5) / 7
    assert got == {(round(cx, 4), round(cy, 4)), (11.0, 11.0), (6544.75, 6013.5)}


def test_quality_failures_name_each_reason():
    from sthelar_platform.registration.slide import quality_failures

    good = reg.RegistrationQC("refined", 0.8, 1.6, 0.97, 500, 480, np.eye(3).tolist(), [[0.8]])
    assert quality_failures(good, 0.274, 0.2738, "metadata", CFG, MAGS) == []
    bad = reg.RegistrationQC("automatic", 2.4, 2.9, 0.2, 500, 480, np.eye(3).tolist(), [[2.4]])
    reasons = quality_failures(bad, 1.1, 0.2738, "metadata", CFG, MAGS)
    assert len(reasons) == 4 and "matched" in reasons[0] and "median" in reasons[1] and "10x" in reasons[3]
    # an assumed pixel size cannot contradict the fit
    assert len(quality_failures(bad, 1.1, 0.25, "assumed", CFG, MAGS)) == 3


def test_level0_refinement_moves_points_to_blob_centroids_and_leaves_touching_nuclei(tmp_path):
    import cv2
    import tifffile

    from sthelar_platform.registration._level0 import refine_on_level0

    img = np.full((1024, 1024, 3), (230, 160, 220), np.uint8)
    lone = [(200.3, 300.7), (700.6, 250.2), (512.25, 800.5)]  # true centres, sub-pixel
    for x, y in lone:
        cv2.circle(img, (round(x * 16 - 8), round(y * 16 - 8)), 13 * 16, (70, 40, 120), -1, cv2.LINE_AA, shift=4)
    pair = [(400.0, 600.0), (424.0, 600.0)]  # touching: one blob holding two detected nuclei
    for x, y in pair:
        cv2.circle(img, (int(x), int(y)), 13, (70, 40, 120), -1)
    path = tmp_path / "he.tif"
    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb")
    detected = np.array([(x + 1.4, y - 1.1) for x, y in lone] + [(x + 1.0, y + 1.0) for x, y in pair])
    refined, moved = refine_on_level0(path, detected, pixel_size_um=0.25, window_um=8.0, sigma_um=0.4)
    assert moved == len(lone)
    assert np.abs(refined[:3] - np.array(lone)).max() < 0.15  # to a tenth of a pixel, from 1.4 px off
    assert np.array_equal(refined[3:], detected[3:])


def test_final_fit_on_level0_points_only():
    rng = np.random.default_rng(1)
    truth = np.array([[0.99, -0.12, 40.0], [0.12, 0.99, -25.0], [0, 0, 1]])
    he = rng.uniform(0, 4000, (400, 2))
    xen = reg.apply(truth, he)
    level0 = rng.random(400) < 0.7
    noisy = he + np.where(level0[:, None], 0.0, rng.normal(0, 1.5, (400, 2)) + 0.8)  # biased detection-level points
    start = reg.fit_affine(noisy, xen)
    fitted, n = reg.final_fit(start, noisy, level0, xen, MORPH_UM, radius_um=3.0)
    assert n == level0.sum()
    assert np.abs(reg.apply(fitted, he) - xen).max() < 1e-6 < np.abs(reg.apply(start, he) - xen).max()


def _deformed_points(amplitude_um: float, seed: int = 0):
    """Xenium nuclei, and the H&E points showing them through an affine and a smooth random displacement."""
    from sthelar_platform.core.displacement import random_field

    rng = np.random.default_rng(seed)
    xen_um = rng.uniform([0, 0], [1400, 1300], (3500, 2))
    field = random_field(np.zeros(2), np.array([1400.0, 1300.0]), max(amplitude_um, 1e-9), 1.0, 400.0, rng)
    seen = xen_um + (field.at(xen_um) if amplitude_um else 0) + rng.normal(0, 0.05, xen_um.shape)
    m = np.array([[HE_UM / MORPH_UM, 0, 30.0], [0, HE_UM / MORPH_UM, -12.0], [0, 0, 1]])
    he_pts = reg.apply(np.linalg.inv(m), seen / MORPH_UM)
    return m, he_pts, xen_um


@pytest.mark.parametrize("amplitude_um", [2.0, 0.0])
def test_a_non_rigid_field_is_fitted_where_sections_deform_and_only_there(amplitude_um):
    m, he_pts, xen_um = _deformed_points(amplitude_um)
    qc = reg.measure(m, he_pts, xen_um / MORPH_UM, MORPH_UM, CFG.match_radius_um, "csv")
    refined = reg.refine_nonrigid(qc, he_pts, xen_um, MORPH_UM, CFG.match_radius_um, CFG.nonrigid)
    warp = reg.warp_of(refined)
    q = reg.apply(m, he_pts) * MORPH_UM
    before = np.median(np.linalg.norm(q - xen_um, axis=1))
    if amplitude_um:
        assert warp is not None and "kept" in refined.nonrigid_note and before > 1.0
        assert np.median(np.linalg.norm(warp.forward(q) - xen_um, axis=1)) < 0.2
        assert refined.nonrigid_median_residual_um < 0.8 * qc.median_residual_um
        assert reg.RegistrationQC(**json.loads(refined.to_json())).nonrigid_field == refined.nonrigid_field
    else:
        assert warp is None and "not kept" in refined.nonrigid_note
    off = reg.refine_nonrigid(qc, he_pts, xen_um, MORPH_UM, CFG.match_radius_um,
                              CFG.nonrigid.model_copy(update={"method": "none"}))
    assert off == qc


def test_a_deformed_section_is_judged_after_its_non_rigid_field():
    """An affine residual over the limits is valid data when the kept field brings it back within them."""
    m, he_pts, xen_um = _deformed_points(4.0, seed=1)
    qc = reg.measure(m, he_pts, xen_um / MORPH_UM, MORPH_UM, CFG.match_radius_um, "csv")
    refined = reg.refine_nonrigid(qc, he_pts, xen_um, MORPH_UM, CFG.match_radius_um, CFG.nonrigid)
    strict = CFG.model_copy(update={"max_median_residual_um": 1.0, "max_p90_residual_um": 1.5})
    assert qc.median_residual_um > 1.0 and reg.warp_of(refined) is not None
    from sthelar_platform.registration.slide import quality_failures

    implied = HE_UM
    assert quality_failures(qc, implied, HE_UM, "metadata", strict, MAGS)
    assert quality_failures(refined, implied, HE_UM, "metadata", strict, MAGS) == []
    assert reg.final_residuals(refined)[1] == refined.nonrigid_median_residual_um < 0.5


def test_a_damaged_non_rigid_field_is_refused_when_the_record_is_read(tmp_path):
    from sthelar_platform.registration.slide import SlideRegistration

    m, he_pts, xen_um = _deformed_points(2.0)
    qc = reg.refine_nonrigid(reg.measure(m, he_pts, xen_um / MORPH_UM, MORPH_UM, CFG.match_radius_um, "csv"),
                             he_pts, xen_um, MORPH_UM, CFG.match_radius_um, CFG.nonrigid)
    record = SlideRegistration(qc=qc, he_pixel_size_um=HE_UM, he_pixel_size_source="metadata",
                               implied_he_pixel_size_um=HE_UM, magnification="40x", morphology_pixel_size_um=MORPH_UM,
                               csv_given=False, csv_median_residual_um=None, csv_matched_fraction=None)
    path = tmp_path / "registration.json"
    path.write_text(record.to_json())
    assert SlideRegistration.read(path).warp is not None
    d = json.loads(path.read_text())
    d["qc"]["nonrigid_field"]["dx"] = [[0.0, 1.0], [2.0]]  # ragged grid
    path.write_text(json.dumps(d))
    with pytest.raises(InputError, match="not a readable registration record"):
        SlideRegistration.read(path)
