"""Focus and marker ink measured from a patch's pixels, on drawn, rendered and real H&E."""

import cv2
import numpy as np
import pandas as pd
import pytest

from sthelar_platform.core.errors import InputError
from sthelar_platform.synth._he_artefacts import jpeg
from sthelar_platform.tiling.artefacts import flag_artefacts, focus_measure, ink_fraction, measure_patches
from tests.support.real_he import stardist_histo


def _nuclei_patch(seed: int = 0, n: int = 40) -> np.ndarray:
    """Purple nuclei with speckled chromatin on pink stroma, 256 px."""
    rng = np.random.default_rng(seed)
    img = np.full((256, 256, 3), (230, 170, 200), np.uint8)
    for _ in range(n):
        c = tuple(int(v) for v in rng.integers(10, 246, 2))
        cv2.ellipse(img, c, (int(rng.integers(8, 14)), int(rng.integers(6, 10))), float(rng.uniform(0, 180)), 0, 360,
                    (90, 50, 140), -1)
    speckle = rng.normal(0, 12, img.shape[:2])[..., None]
    return np.clip(img + speckle, 0, 255).astype(np.uint8)


def test_defocus_lowers_the_focus_measure_and_stain_contrast_does_not():
    sharp = _nuclei_patch()
    blurred = cv2.GaussianBlur(sharp, (0, 0), 2.5)
    paler = np.clip(255 - (255 - sharp.astype(np.float32)) * 0.6, 0, 255).astype(np.uint8)  # a lighter stain
    f_sharp, f_blur, f_pale = focus_measure(sharp), focus_measure(blurred), focus_measure(paler)
    assert f_blur < 0.3 * f_sharp
    assert f_pale == pytest.approx(f_sharp, rel=0.35)  # contrast-normalised: a paler slide is not a blurred one


def test_a_patch_of_glass_has_no_focus():
    assert np.isnan(focus_measure(np.full((256, 256, 3), 244, np.uint8)))


def test_blue_green_and_black_ink_count_and_stains_do_not():
    patch = _nuclei_patch()
    assert ink_fraction(patch) == 0.0
    inked = patch.copy()
    inked[:, :64] = (31, 69, 186)      # the realistic world's blue-green marker over tissue
    inked[:32, 64:] = (20, 22, 21)     # black marker
    assert ink_fraction(inked) == pytest.approx((256 * 64 + 32 * 192) / 256**2, abs=0.01)
    assert ink_fraction(jpeg(inked, 70)) == pytest.approx(ink_fraction(inked), abs=0.03)


def test_real_he_from_a_wheel_has_no_ink_and_a_defined_focus():
    real = stardist_histo()
    assert ink_fraction(real) < 0.001
    assert focus_measure(real) > 0
    assert focus_measure(cv2.GaussianBlur(real, (0, 0), 2.0)) < 0.5 * focus_measure(real)


def test_flags_judge_focus_against_the_slides_own_median(tmp_path):
    names = []
    for i in range(6):
        rgb = _nuclei_patch(i)
        if i == 5:
            rgb = cv2.GaussianBlur(rgb, (0, 0), 2.5)
        cv2.imwrite(str(tmp_path / f"p{i}.png"), rgb[..., ::-1])
        names.append(f"p{i}")
    measured = measure_patches(tmp_path, names)
    flags = flag_artefacts(measured, focus_ratio_below=0.6, ink_above=0.02)
    assert flags["out_of_focus"].tolist() == [False] * 5 + [True]
    assert not flags["ink"].any()
    assert flags.loc["p0", "focus_ratio"] == pytest.approx(1.0, abs=0.3)
    glass = flag_artefacts(pd.DataFrame({"focus": [np.nan], "ink_fraction": [0.0]}), 0.6, 0.02)
    assert not glass["out_of_focus"].any()
    with pytest.raises(InputError, match="missing.png: patch image missing or unreadable"):
        measure_patches(tmp_path, ["missing"])
