"""What the registration stage decided and measured (``registration.json``), as every later stage reads it.

Kept apart from the stage's algorithms (``slide.py``): patches, exports and predictions read the record, so
their code versions follow the record's format, not the registration search.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sthelar_platform.core.config.pipeline import RegistrationConfig
from sthelar_platform.core.displacement import DisplacementField
from sthelar_platform.core.errors import InputError, require_stage_output
from sthelar_platform.core.warehouse import RegistrationFolder
from sthelar_platform.registration import transform as reg


@dataclass(frozen=True)
class SlideRegistration:
    """What the stage decided and measured; written as ``registration.json``."""

    qc: reg.RegistrationQC
    he_pixel_size_um: float
    he_pixel_size_source: str  # metadata / assumed
    implied_he_pixel_size_um: float  # from the fitted scale: what the H&E pixel size must be
    magnification: str
    morphology_pixel_size_um: float
    csv_given: bool
    csv_median_residual_um: float | None  # the CSV as given, before refinement
    csv_matched_fraction: float | None
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # empty = within thresholds
    n_level0_centroids: int = 0  # detected H&E nuclei whose centroid was re-measured on level 0

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def he_px_to_um(self) -> np.ndarray:
        """3x3 affine from level-0 H&E pixels to Xenium µm (the stored transform ends in morphology px)."""
        um = self.morphology_pixel_size_um
        return np.diag([um, um, 1.0]) @ np.asarray(self.qc.transform, float)

    def csv_failures(self, cfg: RegistrationConfig) -> list[str]:
        """Why the alignment CSV as given (before refinement) does not fit the nuclei; empty when it does or
        when there was none.
        """
        if not self.csv_given or self.csv_matched_fraction is None or self.csv_median_residual_um is None:
            return []
        if (self.csv_matched_fraction >= cfg.min_matched_fraction
                and self.csv_median_residual_um <= cfg.max_median_residual_um):
            return []
        return [f"the CSV as given matches {self.csv_matched_fraction:.1%} of nuclei at median "
                f"{self.csv_median_residual_um:.2f} µm; the platform used the {self.qc.source} transform instead"]

    @classmethod
    def of_folder(cls, folder: str | Path) -> SlideRegistration:
        """The registration a ``he_registration`` folder holds (a missing one names the stage to run)."""
        return cls.read(require_stage_output(RegistrationFolder(folder).registration, RegistrationFolder.stage))

    @property
    def warp(self) -> DisplacementField | None:
        """The kept non-rigid correction in Xenium µm (after ``he_px_to_um``), or None."""
        return reg.warp_of(self.qc)

    def to_json(self) -> str:
        d = asdict(self)
        d["passed"] = self.passed
        return json.dumps(d, indent=2)

    @classmethod
    def read(cls, path: str | Path) -> SlideRegistration:
        try:
            d = json.loads(Path(path).read_text())
            d.pop("passed", None)
            d["qc"] = reg.RegistrationQC(**d["qc"])
            reg.warp_of(d["qc"])  # a damaged non-rigid field fails here, not in a later stage
            return cls(**d)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
            raise InputError(path, f"not a readable registration record ({type(exc).__name__}: {exc})",
                             "materialize he_registration for this slide again") from exc


def passed_registration(folder: str | Path) -> SlideRegistration:
    """The slide's registration, refusing one that failed its thresholds.

    The blocking check normally stops downstream assets first; this guards runs that select a
    downstream asset alone.
    """
    r = SlideRegistration.of_folder(folder)
    if not r.passed:
        raise InputError(RegistrationFolder(folder).registration,
                         f"registration failed its quality thresholds ({'; '.join(r.failures)})",
                         "fix the alignment CSV or the H&E for this slide and materialize he_registration again")
    return r
