"""The classical H&E nucleus segmenter on drawn images."""

import cv2
import numpy as np
import pytest
import yaml

from sthelar_platform.core.config import PACKAGED_CONFIG_DIR, load_config
from sthelar_platform.core.errors import ConfigError
from sthelar_platform.tiling.agreement import patch_agreement
from sthelar_platform.tiling.reference_segmentation import ClassicalSegmenter, classical_segmenter
from tests.support.real_he import stardist_histo

PINK, HEMATOXYLIN = (230, 160, 220), (70, 40, 120)


def _image(discs):
    img = np.full((256, 256, 3), PINK, np.uint8)
    truth = np.zeros((256, 256), np.int32)
    for i, (x, y, r) in enumerate(discs, 1):
        cv2.circle(img, (x, y), r, HEMATOXYLIN, -1)
        cv2.circle(truth, (x, y), r, i, -1)
    return img, truth


def test_separate_and_touching_nuclei_are_found_and_split():
    img, truth = _image([(40, 40, 14), (120, 60, 12), (100, 180, 15), (129, 180, 15)])  # last two touch
    inst = ClassicalSegmenter().segment(img, um_per_px=0.25)
    assert inst.dtype == np.int32 and len(np.unique(inst)) - 1 == 4
    m = patch_agreement(truth, inst, radius_px=12)
    assert m["det_f1"] == 1.0 and m["dice"] > 0.9 and m["bpq"] > 0.75


def test_blank_tissue_gives_no_nucleus():
    img = np.full((256, 256, 3), PINK, np.uint8)
    assert ClassicalSegmenter().segment(img, 0.25).max() == 0
    assert ClassicalSegmenter().segment(np.full((256, 256, 3), 255, np.uint8), 0.25).max() == 0


def test_the_configured_segmenter_and_an_unknown_method_is_a_config_error(tmp_path, monkeypatch):
    classical = load_config("tiling").reference_segmentation.classical.model_copy(update={"min_area_um2": 4.0})
    assert classical_segmenter(classical).min_area_um2 == 4.0
    cfg = yaml.safe_load((PACKAGED_CONFIG_DIR / "tiling.yaml").read_text())
    cfg["reference_segmentation"]["method"] = "sam"
    (tmp_path / "tiling.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("STHELAR_CONFIG_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"`reference_segmentation.method`.*Fix") as err:
        load_config("tiling")
    assert err.value.key == "reference_segmentation.method"


def _jpeg_420(img: np.ndarray) -> np.ndarray:
    """The image after a scanner's JPEG: quality 90, chroma at half resolution (YCbCr 4:2:0)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420])
    assert ok
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_jpeg_chroma_subsampling_leaves_the_luminance_guided_outlines_in_place():
    rng = np.random.default_rng(0)
    discs = [(int(x), int(y), int(r)) for x, y, r in zip(rng.integers(20, 236, 40), rng.integers(20, 236, 40),
                                                          rng.integers(4, 7, 40), strict=True)]
    img, _ = _image(discs)  # small nuclei, as at 20x
    img = cv2.GaussianBlur(img, (0, 0), 0.8)
    jpeg = _jpeg_420(img)

    def shift(segmenter):
        return 1 - patch_agreement(segmenter.segment(img, 0.5), segmenter.segment(jpeg, 0.5), 6)["jaccard"]

    guided, plain = shift(ClassicalSegmenter()), shift(ClassicalSegmenter(signal="hematoxylin"))
    assert guided < 0.02 and guided < plain, (guided, plain)


def test_real_he_from_a_wheel_gets_nuclei_of_a_plausible_size():
    """stardist's wheel ships real H&E (histo.jpg, read as 40x): the classical segmenter finds its nuclei.

    benchmarks/results/real_he_segmentation.json: 180 nuclei, median 13.7 µm² (it keeps the dark cores
    of pale, vesicular nuclei, which the synthetic world does not have).
    """
    rgb = stardist_histo()
    from sthelar_platform.core.config import load_config

    inst = classical_segmenter(load_config("tiling").reference_segmentation.classical).segment(rgb, 0.25)  # as configured
    areas = np.bincount(inst.ravel())[1:]
    areas = areas[areas > 0] * 0.25**2
    assert 120 <= len(areas) <= 300, len(areas)
    assert 8 <= float(np.median(areas)) <= 40 and np.percentile(areas, 90) < 80, np.percentile(areas, [50, 90])
