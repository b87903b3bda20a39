"""Real H&E that an installed wheel ships: stardist's ``histo.jpg`` (found without importing stardist,
which would want TensorFlow)."""

import importlib.util
from pathlib import Path

import cv2
import numpy as np


def stardist_histo() -> np.ndarray:
    """The real H&E tile (500 x 300 px, RGB), read as 40x (0.25 µm/px) by the tests that use it."""
    spec = importlib.util.find_spec("stardist")
    assert spec is not None and spec.submodule_search_locations, "stardist (the test extra) is not installed"
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "images" / "histo.jpg"
    return cv2.imread(str(path))[..., ::-1].copy()
