"""Schema of ``tiling.yaml``: patches, the reference H&E segmenter, agreement QC and exports."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from sthelar_platform.core.config._base import Num, PosNum, Section


class TissueMaskConfig(Section):
    thumbnail_max_px: PositiveInt
    max_background_brightness: Num
    min_saturation: Num
    closing_px: int = Field(ge=0)


class PatchesConfig(Section):
    size_px: PositiveInt
    overlap_px: int = Field(ge=0)
    min_nuclei: int = Field(ge=0)
    min_tissue_fraction: Num = Field(ge=0, le=1)
    region_patches: PositiveInt
    png_compression: int = Field(ge=0, le=9)
    label_compression: int = Field(ge=0, le=9)
    workers: PositiveInt
    tissue: TissueMaskConfig


class ClassicalSegmenterConfig(Section):
    signal: Literal["luminance_guided", "hematoxylin"]
    chroma_sigma_um: PosNum
    smoothing_sigma_um: PosNum
    threshold: Literal["otsu"] | float
    min_threshold: Num
    min_area_um2: PosNum
    peak_min_distance_um: PosNum


class CellViTSegmenterConfig(Section):
    checkpoint: str | None = None          # relative to STHELAR_HOME unless absolute
    magnification: Literal["40x", "20x"] | None = None  # only for an official file whose name and config do not say


class ReferenceSegmentationConfig(Section):
    method: Literal["classical", "cellvit"]
    cellvit: CellViTSegmenterConfig = CellViTSegmenterConfig()
    classical: ClassicalSegmenterConfig


class AgreementConfig(Section):
    match_iou: Num = Field(gt=0, lt=1)
    detection_radius_px: dict[str, PosNum]
    flag_below_jaccard: Num = Field(ge=0, le=1)
    flag_focus_ratio_below: Num = Field(ge=0)       # out of focus: focus under this share of the slide's median
    flag_ink_above: Num = Field(ge=0, le=1)         # marker ink: more than this share of the patch's pixels
    max_frac_flagged: Num = Field(ge=0, le=1)


class ExportsConfig(Section):
    drop_flagged: bool
    pannuke: bool
    pannuke_mask_dtype: str


class TilingConfig(Section):
    version: int
    patches: PatchesConfig
    reference_segmentation: ReferenceSegmentationConfig
    agreement: AgreementConfig
    exports: ExportsConfig
