"""Agreement metrics against hand-computed cases (DESIGN.md definitions)."""

import math

import numpy as np
import pytest

from sthelar_platform.tiling.agreement import METRICS, pair_counts, patch_agreement


def _canvas() -> np.ndarray:
    return np.zeros((64, 64), np.int32)


def test_identical_masks_score_one():
    t = _canvas()
    t[5:15, 5:15] = 1
    t[30:40, 30:45] = 2
    m = patch_agreement(t, t.copy(), radius_px=12)
    assert all(m[k] == pytest.approx(1.0) for k in METRICS)


def test_half_overlapping_square_by_hand():
    t, p = _canvas(), _canvas()
    t[0:10, 0:10] = 1
    p[0:10, 5:15] = 1                      # 50 of 100 px shared; IoU = 50 / 150
    m = patch_agreement(t, p, radius_px=12)
    assert m["dice"] == pytest.approx(0.5) and m["jaccard"] == pytest.approx(1 / 3)
    assert m["dq"] == 0 and m["bpq"] == 0   # IoU 1/3 is no match: one FP and one FN
    assert m["det_f1"] == pytest.approx(1.0)  # centroids 5 px apart are within 12 px
    assert patch_agreement(t, p, radius_px=4)["det_f1"] == 0


def test_touching_nuclei_merged_by_the_prediction():
    t, p = _canvas(), _canvas()
    t[0:10, 0:10], t[0:10, 10:20] = 1, 2   # two touching nuclei
    p[0:10, 0:20] = 7                      # one merged blob
    m = patch_agreement(t, p, radius_px=12)
    assert m["dice"] == 1 and m["jaccard"] == 1      # the binary masks are identical
    assert m["bpq"] == 0                             # IoU exactly 0.5 is not > 0.5
    assert m["det_f1"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 1))  # one of two centroids paired


def test_touching_nuclei_split_one_column_off():
    t, p = _canvas(), _canvas()
    t[0:10, 0:10], t[0:10, 10:20] = 1, 2
    p[0:10, 0:11], p[0:10, 11:20] = 900, 5           # ids need not be contiguous
    m = patch_agreement(t, p, radius_px=12)
    sq = (100 / 110 + 90 / 100) / 2
    assert m["dq"] == 1 and m["sq"] == pytest.approx(sq) and m["bpq"] == pytest.approx(sq)


def test_false_positive_counts_half_in_dq():
    t, p = _canvas(), _canvas()
    t[0:10, 0:10] = 1
    p[0:10, 0:10], p[40:50, 40:50] = 1, 2
    m = patch_agreement(t, p, radius_px=12)
    assert m["dq"] == pytest.approx(1 / 1.5) and m["bpq"] == pytest.approx(1 / 1.5)
    assert m["dice"] == pytest.approx(200 / 300) and m["det_f1"] == pytest.approx(2 / 3)


def test_empty_truth_is_undefined_not_zero():
    p = _canvas()
    p[0:5, 0:5] = 1
    for pred in (p, _canvas()):
        m = patch_agreement(_canvas(), pred, radius_px=12)
        assert all(math.isnan(m[k]) for k in METRICS)


def test_empty_prediction_scores_zero():
    t = _canvas()
    t[0:10, 0:10] = 1
    m = patch_agreement(t, _canvas(), radius_px=12)
    assert m["dice"] == 0 and m["jaccard"] == 0 and m["bpq"] == 0 and m["det_f1"] == 0


def test_detection_pairs_are_one_to_one():
    truth = np.array([[0.0, 0.0], [1.0, 0.0]])
    pred = np.array([[0.5, 0.0]])
    assert pair_counts(truth, pred, 12) == (1, 0, 1)
    assert pair_counts(truth, np.array([[13.0, 0.0]]), 12) == (1, 0, 1)  # 12 px from (1, 0)
    assert pair_counts(truth, np.array([[13.5, 0.0]]), 12) == (0, 1, 2)


def test_slide_agreement_flags_low_jaccard_defocus_and_ink_and_names_each_reason(tmp_path):
    import cv2
    import pandas as pd

    from sthelar_platform.tiling.agreement import distribution_summary, slide_agreement
    from sthelar_platform.tiling.patches import save_npz

    patches, ref = tmp_path / "patches", tmp_path / "ref"
    (patches / "labels").mkdir(parents=True)
    (patches / "images").mkdir()
    ref.mkdir()
    rng = np.random.default_rng(0)
    names = [f"p{i}" for i in range(8)]
    for i, name in enumerate(names):
        truth = np.zeros((128, 128), np.int32)
        img = np.full((128, 128, 3), (230, 170, 200), np.uint8)
        for k in range(12):
            x, y = (int(v) for v in rng.integers(12, 116, 2))
            cv2.circle(truth, (x, y), 7, k + 1, -1)
            cv2.circle(img, (x, y), 7, (90, 50, 140), -1)
        img = np.clip(img + rng.normal(0, 10, (128, 128, 1)), 0, 255).astype(np.uint8)
        pred = truth.copy() if i != 1 else np.zeros_like(truth)  # p1: the H&E segmentation finds nothing
        if i == 2:
            img = cv2.GaussianBlur(img, (0, 0), 3.0)  # p2: out of focus
        if i == 3:
            img[:, :40] = (31, 69, 186)  # p3: a blue-green marker stroke
        save_npz(patches / "labels" / f"{name}.npz", {"inst_map": truth}, 1)
        save_npz(ref / f"{name}.npz", {"inst_map": pred}, 1)
        cv2.imwrite(str(patches / "images" / f"{name}.png"), img[..., ::-1])
    pd.DataFrame({"slide_id": "s", "magnification": "40x", "patch_id": names, "name": names, "x0": 0, "y0": 0,
                  "n_nuclei": 12, "tissue": "breast"}).to_parquet(patches / "patches.parquet")
    pd.DataFrame({"n": [0]}).to_parquet(ref / "counts.parquet")

    out = slide_agreement(patches, ref, 12, 0.5, 0.45, focus_ratio_below=0.6, ink_above=0.02)
    assert out["flag_reasons"].tolist() == ["", "low_jaccard", "out_of_focus", "ink", "", "", "", ""]
    assert out["flagged"].tolist() == [False, True, True, True, False, False, False, False]
    assert out.loc[3, "ink_fraction"] == pytest.approx(40 / 128, abs=0.01)
    assert distribution_summary(out)["n_flagged_by_reason"] == {"low_jaccard": 1, "out_of_focus": 1, "ink": 1}
    plain = slide_agreement(patches, ref, 12, 0.5, 0.45)  # without artefact thresholds: Jaccard only
    assert plain["flag_reasons"].tolist() == ["", "low_jaccard", "", "", "", "", "", ""]
    assert "focus_ratio" not in plain
