"""Schema of ``pipeline.yaml``: outputs, ingest, H&E magnifications, registration and automation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from sthelar_platform.core.config._base import Num, PosNum, Range, Section


class IngestConfig(Section):
    required_transcript_columns: list[str]
    required_cell_columns: list[str]
    required_boundary_columns: list[str]
    thumbnail_max_px: PositiveInt
    transcript_row_group_rows: PositiveInt       # rows per parquet row group of the copied transcripts


class HEImageConfig(Section):
    # the one home of each magnification's µm/px range: the scan's magnification, the pyramid level that
    # patches and predictions read
    magnification_um_per_px: dict[str, Range]


class NonrigidConfig(Section):
    method: Literal["none", "grid"] = "grid"
    spacing_um: PosNum = 100.0             # grid of the displacement field
    search_radius_um: PosNum = 8.0         # pairs for the first fit: as far as the affine may leave a nucleus
    min_pairs: PositiveInt = 8             # per grid cell; emptier cells take their neighbours' value
    smoothing_cells: Num = Field(default=0.0, ge=0)  # Gaussian smoothing of the fitted grid, in cells
    min_improvement: Num = Field(default=0.2, ge=0, lt=1)  # keep the field only if the median residual falls by this share


class RegistrationConfig(Section):
    detection_um_per_px: PosNum
    detection_sigma_um: PosNum
    detection_min_distance_um: PosNum
    level0_window_um: Num = Field(ge=0)
    level0_sigma_um: PosNum
    match_radius_um: PosNum
    coarse_bin_um: PosNum
    coarse_rotations_deg: tuple[Num, Num, Num]
    coarse_scales: tuple[Num, Num, Num]
    ransac_iterations: PositiveInt
    coarse_radii_um: list[PosNum]
    icp_radii_um: list[PosNum]
    min_he_nuclei: PositiveInt
    assumed_he_um_per_px: PosNum
    unknown_pixel_size_candidates_um: list[PosNum]
    unknown_pixel_size_scales: tuple[Num, Num, Num]
    fallback_to_automatic: bool
    min_matched_fraction: Num = Field(ge=0, le=1)
    max_median_residual_um: PosNum
    max_p90_residual_um: PosNum
    pixel_size_tolerance: PosNum
    scale_tolerance: PosNum
    nonrigid: NonrigidConfig = NonrigidConfig()


class AutomationConfig(Section):
    landing_dir: str
    landing_interval_s: PositiveInt
    landing_settle_s: Num = Field(ge=0)
    landing_replace_existing: bool
    reference_observe_cron: str


class OutputsConfig(Section):
    stale_tmp_max_age_s: PosNum


class PipelineConfig(Section):
    version: int
    outputs: OutputsConfig
    ingest: IngestConfig
    he_image: HEImageConfig
    registration: RegistrationConfig
    automation: AutomationConfig
