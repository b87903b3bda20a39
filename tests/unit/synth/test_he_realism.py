"""The realistic world's H&E: measured stains per slide, texture, crowding and the artefacts of real slides."""

import json

import numpy as np
import polars as pl
import pytest
import tifffile
from scipy import ndimage
from scipy.spatial import cKDTree

from sthelar_platform.core.config import load_categories, load_synthetic
from sthelar_platform.core.stain import macenko_vectors
from sthelar_platform.synth import synthesize_cohort, true_he_to_um
from sthelar_platform.synth._he_artefacts import (
    SlideArtefacts,
    apply_bubble,
    apply_fold,
    blur_regions,
    jpeg,
    pen_mask,
    sample_artefacts,
)
from sthelar_platform.synth._he_realism import sample_stain
from sthelar_platform.synth._texture import seamless_noise
from sthelar_platform.tiling.reference_segmentation import ClassicalSegmenter

REALISTIC_HE = load_synthetic().worlds["realistic"].he


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


def test_slide_stains_scatter_around_the_measured_real_ones():
    stains = [sample_stain(REALISTIC_HE.stain, np.random.default_rng(i)) for i in range(300)]
    h = np.array([s.hematoxylin for s in stains])
    e = np.array([s.eosin for s in stains])
    assert np.allclose(np.linalg.norm(h, axis=1), 1, atol=1e-5)
    assert _angle_deg(h.mean(0), np.array(REALISTIC_HE.stain.hematoxylin)) < 2
    assert _angle_deg(e.mean(0), np.array(REALISTIC_HE.stain.eosin)) < 2
    spread = [_angle_deg(v, np.array(REALISTIC_HE.stain.hematoxylin)) for v in h]
    assert 2 < np.median(spread) < 10  # slides differ, but stay hematoxylin
    assert np.std([s.h_scale for s in stains]) > 0.05


def test_artefact_probabilities_decide_which_slides_get_folds_bubbles_pens_and_jpeg():
    every = REALISTIC_HE.artefacts.model_copy(update={"fold_probability": 1, "bubble_probability": 1,
                                                       "pen_probability": 1, "jpeg_probability": 1})
    none = every.model_copy(update={"fold_probability": 0, "bubble_probability": 0, "pen_probability": 0,
                                    "jpeg_probability": 0, "blur_regions_per_mm2": 0})
    art = sample_artefacts(every, (1400, 1300), np.random.default_rng(0))
    assert art.fold is not None and art.bubble is not None and art.pen is not None
    assert every.jpeg_quality[0] <= art.jpeg_quality <= every.jpeg_quality[1]
    assert (art.pen >= 0).all() and (art.pen[:, 0] <= 1400).all() and (art.pen[:, 1] <= 1300).all()
    plain = sample_artefacts(none, (1400, 1300), np.random.default_rng(0))
    assert (plain.fold, plain.bubble, plain.pen, plain.jpeg_quality, len(plain.blur)) == (None, None, None, None, 0)


def _grid(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    return xx, yy  # 1 µm per pixel


def test_a_fold_doubles_the_section_under_it_and_nothing_far_away():
    xx, yy = _grid()
    od = np.full((64, 64, 3), 0.2)
    apply_fold(od, xx, yy, np.array([32, 0, 32, 64, 10.0]))  # a vertical band 10 µm wide at x = 32
    assert od[30, 32, 0] == pytest.approx(0.2 * 1.9, rel=0.02)
    assert od[30, 5, 0] == pytest.approx(0.2, rel=1e-3)
    assert od[30, 36, 0] > od[30, 32, 0]  # the crease at the band's edge is darker still


def test_a_bubble_washes_out_inside_and_draws_a_rim():
    xx, yy = _grid()
    od = np.full((64, 64, 3), 0.2)
    apply_bubble(od, xx, yy, np.array([32, 32, 20.0]))
    assert od[32, 32, 0] < 0.2 * 0.7 and od[32, 12, 0] > 0.5 and od[32, 2, 0] == pytest.approx(0.2, abs=0.01)


def test_the_pen_stroke_covers_its_path_on_the_tile_it_crosses_and_no_other():
    art = SlideArtefacts(np.zeros((0, 4)), None, None, None, np.array([[0, 30.0], [64, 30.0]]), 6.0,
                         np.array([0.9, 0.5, 0.1], np.float32))
    one_um_per_px = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    mask = pen_mask(art, one_um_per_px, (64, 64))
    assert mask[30, 10] > 0.9 and mask[50, 10] == 0
    far = np.array([[1.0, 0, -500], [0, 1.0, -500]])
    assert pen_mask(art, far, (64, 64)) is None


def test_out_of_focus_regions_lose_detail_only_inside():
    rng = np.random.default_rng(0)
    rgb = rng.uniform(0, 255, (64, 128, 3)).astype(np.float32)
    xx, yy = np.meshgrid(np.arange(128.0), np.arange(64.0))
    out = blur_regions(rgb, xx, yy, np.array([[32, 32, 30, 2.0]]), um_per_px=1.0)
    assert out[24:40, 24:40].std() < 0.5 * rgb[24:40, 24:40].std()
    assert np.array_equal(out[:, 100:], rgb[:, 100:])


def test_jpeg_changes_pixels_in_eight_pixel_blocks_and_none_keeps_them():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    assert jpeg(rgb, None) is rgb
    out = jpeg(rgb, 60)
    assert out.shape == rgb.shape and out.dtype == np.uint8 and np.abs(out.astype(int) - rgb).mean() > 5


@pytest.fixture(scope="module")
def realistic_tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("realistic")
    synthesize_cohort(out, "tiny", load_synthetic(), load_categories(), world="realistic")
    return out / "slides" / "tiny"


def test_a_realistic_slide_carries_its_drawn_stains_and_records_its_appearance(realistic_tiny):
    look = json.loads((realistic_tiny / "truth" / "he_appearance.json").read_text())
    rgb = tifffile.imread(next((realistic_tiny / "he").glob("*.ome.tif")), level=1)
    h, e = macenko_vectors(rgb)
    assert _angle_deg(h, np.array(look["stain"]["hematoxylin"])) < 12  # Macenko's extremes mix the stains a little
    assert _angle_deg(e, np.array(look["stain"]["eosin"])) < 12
    ruifrok_h = np.array([0.650, 0.704, 0.286])
    assert _angle_deg(h, np.array(look["stain"]["hematoxylin"])) < _angle_deg(h, ruifrok_h)
    assert look["fibres"] > 100 and look["nucleoli"] > 20


def test_reference_segmentation_still_finds_the_nuclei_of_textured_he(realistic_tiny):
    """Crowded, pale, textured nuclei: the classical segmenter finds most of them, at their true places."""
    truth = pl.read_parquet(realistic_tiny / "truth" / "cells.parquet").filter(pl.col("has_nucleus"))
    rgb = tifffile.imread(next((realistic_tiny / "he").glob("*.ome.tif")), level=0)
    inst, n = np.zeros(rgb.shape[:2], np.int32), 0
    for y in range(0, rgb.shape[0], 256):  # patch by patch, as segmentation_agreement does
        for x in range(0, rgb.shape[1], 256):
            patch = ClassicalSegmenter().segment(np.ascontiguousarray(rgb[y:y + 256, x:x + 256]),
                                                 load_synthetic().he_pixel_size_um)
            inst[y:y + 256, x:x + 256] = np.where(patch > 0, patch + n, 0)
            n += int(patch.max())
    labels = np.unique(inst)[1:]
    centres = np.array(ndimage.center_of_mass(inst > 0, inst, labels))[:, ::-1] + 0.5  # (x, y) px
    found_um = true_he_to_um(realistic_tiny / "truth")(centres)
    d_found, _ = cKDTree(truth.select("x_um", "y_um").to_numpy()).query(found_um)
    d_truth, _ = cKDTree(found_um).query(truth.select("x_um", "y_um").to_numpy())
    assert (d_found < 3).mean() > 0.75  # precision (measured 0.87: nuclei cut by patch borders count twice)
    assert (d_truth < 3).mean() > 0.9  # recall (measured 0.98)


def test_the_recorded_artefacts_say_which_places_they_cover():
    art = SlideArtefacts(np.array([[100.0, 100.0, 20.0, 1.0]]), 70, np.array([0, 300, 200, 300, 10.0]),
                         np.array([400.0, 100.0, 50.0]), np.array([[0, 500.0], [200, 500.0]]), 30.0,
                         np.array([0.9, 0.5, 0.1], np.float32))
    again = SlideArtefacts.from_dict(json.loads(json.dumps(art.to_dict())))
    pts = np.array([[100, 105], [100, 303], [420, 100], [50, 510], [600, 600]], float)
    got = again.covers(pts)
    assert got["blur"].tolist() == [True, False, False, False, False]
    assert got["fold"].tolist() == [False, True, False, False, False]
    assert got["bubble"].tolist() == [False, False, True, False, False]
    assert got["pen"].tolist() == [False, False, False, True, False]


def test_texture_noise_joins_across_tiles_and_has_unit_scale():
    whole = seamless_noise(7, 2, -40, 0, (300, 1024), 7.3)
    left, right = seamless_noise(7, 2, -40, 0, (300, 512), 7.3), seamless_noise(7, 2, -40, 512, (300, 512), 7.3)
    assert np.allclose(whole, np.hstack([left, right]), atol=1e-4)  # no seam at the tile edge
    assert abs(whole.mean()) < 0.1 and 0.8 < whole.std() < 1.2
    assert not np.allclose(whole, seamless_noise(8, 2, -40, 0, (300, 1024), 7.3))  # another slide, another texture
    lag = np.corrcoef(whole[:, :-7].ravel(), whole[:, 7:].ravel())[0, 1]
    assert 0.3 < lag < 0.95  # correlated over about sigma, not beyond
