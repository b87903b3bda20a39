"""Dashboard helpers: warnings name every missed threshold; missing dbt results are shown, not a crash;
the embedded JSON cannot close its script tag."""

import json

import numpy as np

from sthelar_platform.qc.dashboard import _json, dbt_status, metric_histograms, patch_grid, slide_warnings

T = {"max_frac_flagged": 0.5, "flag_below_jaccard": 0.45, "flag_focus_ratio_below": 0.6, "flag_ink_above": 0.02}


def test_warnings_for_each_failed_threshold():
    s = {"slide_id": "s1", "registration_passed": False, "registration_failures": "median residual 3.1 µm",
         "annotation_passed": True, "frac_flagged_40x": 0.62, "frac_flagged_20x": 0.1,
         "n_failed_materializations": 2, "qc_status": "fail"}
    w = slide_warnings(s, T)
    assert any("registration failed (median residual 3.1 µm)" in x for x in w)
    assert any("62.0% of 40x patches flagged" in x for x in w) and not any("20x" in x for x in w)
    assert any("2 failed materialization" in x for x in w)
    assert slide_warnings({"slide_id": "ok", "registration_passed": True, "annotation_passed": True,
                           "frac_flagged_40x": 0.01, "qc_status": "pass"}, T) == []


def test_missing_dbt_results_are_reported(tmp_path):
    d = dbt_status(tmp_path / "nope.json")
    assert d["missing"] and d["n_failed"] == 0
    (tmp_path / "rr.json").write_text(json.dumps({"metadata": {"generated_at": "t"}, "results": [
        {"unique_id": "test.sthelar_qc.not_null_x.abc", "status": "warn", "failures": 3, "message": "Got 3 results"},
        {"unique_id": "model.sthelar_qc.slide_summary", "status": "success"}]}))
    d = dbt_status(tmp_path / "rr.json")
    assert d["n_tests"] == 1 and d["n_failed"] == 1 and d["problems"][0]["name"] == "not_null_x"


def test_embedded_json_is_script_safe_and_has_no_nan():
    text = _json({"a": float("nan"), "b": "</script><script>alert(1)</script>"})
    assert "</script>" not in text and json.loads(text)["a"] is None


def test_patches_land_in_their_grid_cells_and_histograms_count_defined_values():
    p = {"x0": np.array([0, 192, 576]), "y0": np.array([0, 0, 384]), "jaccard": np.array([0.5, np.nan, 0.9]),
         "dice": np.array([0.6, np.nan, 0.95]), "bpq": np.array([0.4, np.nan, 0.8]), "det_f1": np.array([1.0, np.nan, 1.0])}
    g = patch_grid(p)
    assert g["x"] == [0, 192, 384, 576] and g["y"] == [0, 192, 384] and g["n"] == 3
    assert g["z"][0][0] == 0.5 and g["z"][0][1] is None and g["z"][2][3] == 0.9 and g["z"][1][2] is None
    h = metric_histograms(p)
    assert sum(h["counts"]["jaccard"]) == 2 and len(h["centers"]) == 40 and h["counts"]["det_f1"][-1] == 2
