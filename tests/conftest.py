"""Shared fixtures: one tiny SYNTHETIC cohort per test process (generated in seconds)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "False")
os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager try to download a driver
# wsidicomizer writes the DICOM WSI test scans from its own environment (`make wsidicomizer`)
_DICOMIZER = Path(__file__).resolve().parents[1] / ".venv-wsidicomizer" / "bin" / "wsidicomizer"
if _DICOMIZER.exists():
    os.environ.setdefault("STHELAR_WSIDICOMIZER", str(_DICOMIZER))


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    from sthelar_platform.core.config import load_categories, load_synthetic
    from sthelar_platform.synth import synthesize_cohort

    out = tmp_path_factory.mktemp("tiny_cohort")
    synthesize_cohort(out, "tiny", load_synthetic(), load_categories(), seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_slide(tiny_cohort) -> Path:
    return tiny_cohort / "slides" / "tiny"


@pytest.fixture(scope="session")
def tiny_he(tiny_slide) -> Path:
    """The tiny slide's H&E (OME-TIFF); read-only."""
    return next((tiny_slide / "he").glob("*he_image.ome.tif"))


@pytest.fixture(scope="session")
def tiny_dicom(tiny_he, tmp_path_factory) -> Path:
    """The tiny slide's H&E as a DICOM WSI series folder (wsidicomizer's copy of its SVS variant); read-only."""
    from sthelar_platform.synth.he_formats import write_he_variant

    return write_he_variant(tiny_he, tmp_path_factory.mktemp("dicom"), "dicom")


@pytest.fixture()
def slide_copy(tiny_slide, tmp_path) -> Path:
    """A private copy of the tiny slide that a test may break."""
    dst = tmp_path / "slide"
    shutil.copytree(tiny_slide, dst)
    return dst
