"""Versioned configuration files, read once at the edge (an asset or the CLI) into typed objects.

The YAML files ship in ``sthelar_platform/config/``; ``STHELAR_CONFIG_DIR`` points at a folder whose
files replace the packaged ones of the same name, so a lab changes thresholds or mappings without
editing code. Each file is validated on load against the models below: an unknown key, a missing key
or a value of the wrong type fails with the file and the dotted key named. Library functions never
read these files; they take the section they use as an argument.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, model_validator

from sthelar_platform.core.categories import CategorySystem
from sthelar_platform.core.errors import InputError
from sthelar_platform.core.hashing import sha256_file

PACKAGED_CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
CONFIG_NAMES = ("pipeline", "annotation", "categories", "tiling", "training", "deployment", "synthetic")


class Section(BaseModel):
    """A validated, immutable config section.

    Stage code reads fields as attributes; mapping-style reads (``cfg["key"]``, ``**cfg``) work too, so a
    test can hand a stage function a plain dict with the same keys.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in type(self).model_fields else default

    def keys(self) -> Iterator[str]:
        return iter(type(self).model_fields)

    def __contains__(self, key: object) -> bool:
        return key in type(self).model_fields

# Numbers keep the type YAML gave them (an int stays an int where a stage indexes with it).
Num = int | float
PosNum = PositiveInt | PositiveFloat
Range = tuple[Num, Num]


# --- pipeline.yaml ---------------------------------------------------------------------------------

class IngestConfig(Section):
    required_transcript_columns: list[str]
    required_cell_columns: list[str]
    required_boundary_columns: list[str]
    thumbnail_max_px: PositiveInt
    transcript_row_group_rows: PositiveInt


class HEImageConfig(Section):
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


# --- annotation.yaml -------------------------------------------------------------------------------

class CountsConfig(Section):
    qv_min: Num = Field(ge=0)


class ReferencesConfig(Section):
    default: dict[str, Any]
    tissues: dict[str, dict[str, Any]]
    min_shared_genes: PositiveInt
    min_cells_per_label: int = Field(ge=0)
    extra_label_map: dict[str, str] = {}


class TangramConfig(Section):
    mode: Literal["cells", "clusters"]
    bag_size: PositiveInt
    reference_subsample: PositiveInt
    num_epochs: PositiveInt
    learning_rate: PosNum
    device: str
    scoring: Literal["row_normalized", "clip_minmax"]
    clip_percentiles: Range
    min_score: Num
    compartments: list[Literal["cell", "nucleus"]]
    seed: int
    markers_above_genes: PositiveInt    # more shared genes: train on the atlas' top markers per label
    markers_per_label: PositiveInt


class ClusteringConfig(Section):
    target_sum: PosNum
    scale_max: PosNum
    n_pcs: PositiveInt
    n_neighbors: PositiveInt
    resolution: PosNum
    seed: int
    n_marker_genes: PositiveInt
    hvg_above_genes: PositiveInt        # larger panels: PCA on the n_top_hvg most variable genes only
    n_top_hvg: PositiveInt
    wilcoxon_max_cells_per_cluster: PositiveInt | None = None
    exact_knn_max_cells: PositiveInt = 130_000  # more cells: approximate (pynndescent) kNN graph


class MarkersConfig(Section):
    min_score: Num
    genes: dict[str, list[str]]


class RuleConfig(Section):
    flag_disagreeing_fraction: Num = Field(ge=0, le=1)
    keep_own_label_min_probability: Num = Field(ge=0, le=1)


class CrosscheckConfig(Section):
    method: Literal["centroid_correlation"]
    singler: bool = True                   # also SingleR (the singler package) on the atlas's fine labels
    singler_threads: int = Field(default=0, ge=0)  # 0: every core


class AnnotationChecksConfig(Section):
    max_frac_unknown: Num = Field(ge=0, le=1)
    max_frac_less10: Num = Field(ge=0, le=1)
    min_crosscheck_agreement: Num = Field(ge=0, le=1)
    max_frac_flagged_clusters: Num = Field(ge=0, le=1)


class AnnotationConfig(Section):
    version: int
    counts: CountsConfig
    references: ReferencesConfig
    tangram: TangramConfig
    clustering: ClusteringConfig
    markers: MarkersConfig
    rule: RuleConfig
    crosscheck: CrosscheckConfig
    checks: AnnotationChecksConfig


# --- categories.yaml -------------------------------------------------------------------------------

class GroupingSpec(Section):
    classes: list[str]
    members: dict[str, list[str]] = {}


class CategoriesConfig(Section):
    version: int
    categories: list[str]
    special_labels: list[str]
    less10_max_transcripts: int = Field(ge=0)
    groupings: dict[str, GroupingSpec]
    label_map: dict[str, str]

    def system(self) -> CategorySystem:
        return CategorySystem(
            categories=tuple(self.categories), special_labels=tuple(self.special_labels),
            less10_max_transcripts=self.less10_max_transcripts, label_map=dict(self.label_map),
            _groupings={k: g.model_dump() for k, g in self.groupings.items()})


# --- tiling.yaml -----------------------------------------------------------------------------------

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
    peak_footprint_um: PosNum


class ReferenceSegmentationConfig(Section):
    method: Literal["classical", "cellvit"]
    cellvit: dict[str, Any]
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
    magnifications: dict[str, Range]
    reference_segmentation: ReferenceSegmentationConfig
    agreement: AgreementConfig
    exports: ExportsConfig


# --- training.yaml ---------------------------------------------------------------------------------

class HFLayoutConfig(Section):
    tissue_classes: list[str]
    tissue_names: dict[str, str]
    shard_rows: PositiveInt = 2000
    row_group_rows: PositiveInt = 128


class DatasetConfig(Section):
    magnification: str
    magnifications: list[str]
    groupings: list[str]
    layouts: list[Literal["sthelar", "cellvit_folds", "hf"]]
    hf: HFLayoutConfig
    split: Literal["block", "slide", "patient"]
    block_px: PositiveInt
    fractions: dict[Literal["train", "val", "test"], float]
    test_slides: list[str] = []
    seed: int


class ScheduleConfig(Section):
    size: str
    epochs: PositiveInt
    batch_size: PositiveInt
    lr: PosNum
    max_batches_per_epoch: PositiveInt | None = None
    max_val_batches: PositiveInt | None = None
    patience: PositiveInt
    magnification: str | None = None       # the patches this schedule trains on; None: dataset.magnification
    background_weight: PosNum = 1.0        # NT cross-entropy weight of background pixels (cell classes average 1)
    window_px: PositiveInt | None = None   # train on windows of each 256 px patch; None: whole patches
    lr_schedule: Literal["constant", "cosine"] = "constant"
    cell_head: bool = False                # a per-nucleus type classifier on pooled encoder features
    type_maps: bool = True                 # the NT branch (a model with a cell head may drop it)
    cell_weight_power: Num = Field(default=1.0, ge=0)  # cell head CE class weights = pixel class weights ** this


class TrainingRunConfig(Section):
    schedules: dict[str, ScheduleConfig]
    weight_decay: Num = Field(ge=0)
    augment: bool
    seed: int
    amp: bool
    loss_weights: dict[str, Num] = {}
    init_checkpoint: str | None = None
    freeze_encoder_epochs: int = Field(default=0, ge=0)


class EvaluationConfig(Section):
    split: Literal["train", "val", "test"]
    detection_radius_px: dict[str, PosNum]   # per magnification
    targets: dict[str, Num]


class PostprocessConfig(Section):
    min_area_px: dict[str, PositiveInt]   # per magnification the model was trained at
    sobel_ksize: dict[str, PositiveInt]
    edge_threshold: Num
    opening_px: dict[str, PositiveInt] = {"40x": 5, "20x": 3}   # as the packaged training.yaml


class InferenceConfig(Section):
    grouping: str
    batch_size: PositiveInt
    min_tissue_fraction: Num = Field(ge=0, le=1)
    region_tiles: PositiveInt
    link_min_iou: Num = Field(ge=0, le=1)


class TrainingConfig(Section):
    version: int
    dataset: DatasetConfig
    training: TrainingRunConfig
    evaluation: EvaluationConfig
    postprocess: PostprocessConfig
    inference: InferenceConfig

    @model_validator(mode="after")
    def _schedules_train_on_exported_patches(self) -> TrainingConfig:
        for kind, schedule in self.training.schedules.items():
            if schedule.magnification and schedule.magnification not in self.dataset.magnifications:
                raise ValueError(f"training.schedules.{kind}.magnification {schedule.magnification!r} is not among "
                                 f"dataset.magnifications {self.dataset.magnifications}")
        return self


# --- deployment.yaml -------------------------------------------------------------------------------

class ComputeClass(Section):
    pool: str | None = None
    container_config: dict[str, Any] = {}
    pod_spec_config: dict[str, Any] = {}


class DeploymentConfig(Section):
    version: int
    classes: dict[str, ComputeClass]
    assets: dict[str, str]
    # asset -> the bench stage (or ``stage.step``) whose peak RSS on the xl slide sized its class
    measured_by: dict[str, str] = {}

    @model_validator(mode="after")
    def _classes_exist(self) -> DeploymentConfig:
        unknown = {a: c for a, c in self.assets.items() if c not in self.classes}
        if unknown:
            raise ValueError(f"assets name unknown classes {unknown} (classes: {sorted(self.classes)})")
        stray = sorted(set(self.measured_by) - set(self.assets))
        if stray:
            raise ValueError(f"measured_by names assets without a class: {stray}")
        return self


# --- synthetic.yaml (the generator's world: free-form tissue descriptions below the top level) --------

class SyntheticSize(Section):
    extent_um: Range
    transcripts_per_cell: PosNum
    density_scale: PosNum = 1.0
    panel_genes: PositiveInt | None = None  # pad the marker panel with filler genes to this many (Prime 5K)
    slides: list[tuple[str, str]]
    world: str = "simple"                   # the `worlds` entry this size is drawn in unless told otherwise


class WorldExpression(Section):
    spillover_fraction: Num = Field(default=0.0, ge=0, lt=1)   # share of a cell's transcripts from its neighbours
    spillover_neighbours: PositiveInt = 4
    doublet_fraction: Num = Field(default=0.0, ge=0, le=1)     # cells merged with their nearest neighbour
    ambient_fraction: Num = Field(default=0.0, ge=0, lt=1)     # share of transcripts from the slide's mean profile
    slide_batch_sd: Num = Field(default=0.0, ge=0)             # gene-wise log-normal shift of the slide


class WorldAtlas(Section):
    missing_categories: dict[str, list[str]] = {}   # tissue -> categories on the slides but not in its atlas
    label_names: dict[str, str] = {}                # fine label -> the name the atlases give it


class WorldDeformation(Section):
    amplitude_um: Num = Field(default=0.0, ge=0)    # rms displacement of the H&E section against the DAPI, centre
    edge_gain: Num = Field(default=0.0, ge=0)       # ... growing to (1 + edge_gain) times it at the tissue edge
    correlation_um: PosNum = 400.0                   # the length over which the displacement changes


Vec3 = tuple[Num, Num, Num]


class HEStain(Section):
    hematoxylin: Vec3                             # optical-density direction (RGB), the slides' mean
    eosin: Vec3
    source: str                                   # where the mean vectors were measured
    vector_sd: Num = Field(ge=0, le=0.3)          # per-component jitter of each slide's vectors, renormalised
    intensity_sd: Num = Field(ge=0, le=1)         # log-normal per-slide scale of each stain's density


class HENuclei(Section):
    chromatin: Num = Field(ge=0, le=1)            # contrast of coarse chromatin clumps
    clump_um: PosNum                              # their size
    rim: Num = Field(ge=0)                        # extra hematoxylin on the nuclear membrane (x darkness)
    vesicular: dict[str, Num]                     # category -> interior density of pale, open nuclei (x darkness)
    nucleolus_min_radius_um: PosNum               # nuclei at least this large show a nucleolus
    nucleolus_radius_um: Range
    nucleolus_darkness: Num = Field(ge=0)
    crowding: dict[str, PosNum]                   # region -> nucleus scale in the H&E: touching, overlapping


class HECells(Section):
    membrane: Num = Field(ge=0)                   # eosin on cell borders
    granularity: Num = Field(ge=0, le=1)          # cytoplasm texture contrast
    fibres_per_1000um2: Num = Field(ge=0)         # collagen fibres in stroma, along the tissue's flow
    fibre_length_um: Range
    fibre_width_um: Range
    fibre_eosin: Num = Field(ge=0)
    stroma_ground: Num = Field(ge=0, le=1)        # share of the stroma's eosin left between the fibres
    red_cells_per_100um2: Num = Field(ge=0)       # in vessel lumens
    red_cell_radius_um: Range
    red_cell_eosin: Num = Field(ge=0)
    red_cell_pallor: Num = Field(ge=0, le=1)      # the pale centre's density (x red_cell_eosin)


class HEArtefacts(Section):
    blur_regions_per_mm2: Num = Field(ge=0)       # out-of-focus patches
    blur_radius_um: Range
    blur_sigma_um: Range
    jpeg_probability: Num = Field(ge=0, le=1)     # the slide was JPEG-compressed by its scanner
    jpeg_quality: tuple[int, int]
    fold_probability: Num = Field(ge=0, le=1)     # a tissue fold: a band of doubled section
    fold_width_um: Range
    fold_length_um: Range
    bubble_probability: Num = Field(ge=0, le=1)   # an air bubble under the coverslip
    bubble_radius_um: Range
    pen_probability: Num = Field(ge=0, le=1)      # a marker stroke on the glass
    pen_width_um: Range
    pen_od: Vec3                                  # the ink's optical density (RGB)


class WorldHE(Section):
    stain: HEStain
    nuclei: HENuclei
    cells: HECells
    artefacts: HEArtefacts


class World(Section):
    expression: WorldExpression = WorldExpression()
    atlas: WorldAtlas = WorldAtlas()
    he_deformation: WorldDeformation = WorldDeformation()
    he: WorldHE | None = None                     # None: flat textbook H&E (Ruifrok stains, no texture)


class FillerGenes(Section):
    prefix: str
    median_expression: PosNum
    log_sd: PosNum
    label_specific_fraction: Num = Field(ge=0, le=1)


class SyntheticConfig(Section):
    version: int
    morphology_pixel_size_um: PosNum
    he_pixel_size_um: PosNum
    analysis_sw_version: str
    sizes: dict[str, SyntheticSize]
    reference_cells: dict[str, PositiveInt]
    filler_genes: FillerGenes | None = None
    less10_fraction: Num = Field(ge=0, le=1)
    no_nucleus_fraction: Num = Field(ge=0, le=1)
    unassigned_fraction: Num = Field(ge=0, le=1)
    negative_control_fraction: Num = Field(ge=0, le=1)
    low_qv_fraction: Num = Field(ge=0, le=1)
    nuclear_fraction: Num = Field(ge=0, le=1)
    shapes: dict[str, dict[str, Any]]
    density: dict[str, Num]
    eosin: dict[str, Num]
    tissues: dict[str, dict[str, Any]]
    fine_labels: dict[str, dict[str, list[str]]]
    category_markers: dict[str, list[str]]
    fine_markers: dict[str, list[str]]
    shared_markers: dict[str, list[str]]
    worlds: dict[str, World] = {"simple": World()}

    @model_validator(mode="after")
    def _sizes_name_known_worlds(self) -> SyntheticConfig:
        for name, size in self.sizes.items():
            if size.world not in self.worlds:
                raise ValueError(f"sizes.{name}.world {size.world!r} is not among worlds: {', '.join(self.worlds)}")
        return self


MODELS: dict[str, type[Section]] = {
    "pipeline": PipelineConfig, "annotation": AnnotationConfig, "categories": CategoriesConfig,
    "tiling": TilingConfig, "training": TrainingConfig, "deployment": DeploymentConfig,
    "synthetic": SyntheticConfig,
}
S = TypeVar("S", bound=Section)


# --- loading ---------------------------------------------------------------------------------------

def config_dir() -> Path:
    """The active override folder, or the packaged one."""
    override = os.environ.get("STHELAR_CONFIG_DIR")
    return Path(override) if override else PACKAGED_CONFIG_DIR


def config_path(name: str) -> Path:
    """The file a config name resolves to: the override folder's, else the packaged one."""
    if name not in MODELS:
        raise KeyError(f"unknown config {name!r}; known: {', '.join(MODELS)}")
    candidate = config_dir() / f"{name}.yaml"
    return candidate if candidate.exists() else PACKAGED_CONFIG_DIR / f"{name}.yaml"


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        kind = {"extra_forbidden": "unknown key", "missing": "missing key"}.get(err["type"], err["msg"])
        parts.append(f"`{key}`: {kind}")
    more = f" (and {len(exc.errors()) - 5} more)" if len(exc.errors()) > 5 else ""
    return "; ".join(parts) + more


@functools.cache
def _load(name: str, path: str, mtime: Num) -> Section:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML ({exc})", "fix the YAML syntax or restore the packaged file") from exc
    if not isinstance(data, dict):
        raise InputError(path, "config must be a mapping at the top level", "restore the packaged file's layout")
    try:
        return MODELS[name].model_validate(data)
    except ValidationError as exc:
        raise InputError(path, f"invalid config: {_describe(exc)}",
                         f"compare with the packaged {name}.yaml and fix or remove those keys") from None


def load_config(name: str) -> Section:
    """The named config file as its validated model (cached until the file changes)."""
    path = config_path(name)
    if not path.exists():
        raise InputError(path, "config file not found", f"create {path.name} or unset STHELAR_CONFIG_DIR")
    return _load(name, str(path), path.stat().st_mtime)


def config_version(name: str) -> str:
    """Content hash of a config file: part of the code version of the assets that read it."""
    return sha256_file(config_path(name))[:12]


def overrides_dir() -> Path:
    """Where reviewed per-slide override files live (``overrides/`` of the active config folder)."""
    return config_dir() / "overrides"


@dataclass(frozen=True)
class Settings:
    """Every config file, validated: what the edge loads once and hands to stage functions piece by piece."""

    pipeline: PipelineConfig
    annotation: AnnotationConfig
    categories_config: CategoriesConfig
    tiling: TilingConfig
    training: TrainingConfig
    deployment: DeploymentConfig
    overrides_dir: Path

    @functools.cached_property
    def categories(self) -> CategorySystem:
        return self.categories_config.system()


def load_settings() -> Settings:
    """All stage configs of the active config folder (each file cached until it changes)."""
    return Settings(*(load_config(n) for n in ("pipeline", "annotation", "categories", "tiling", "training",  # type: ignore[arg-type]
                                                "deployment")), overrides_dir())


def load_synthetic() -> SyntheticConfig:
    """The synthetic world's config (the generator's tissues, sizes and expression)."""
    return load_config("synthetic")  # type: ignore[return-value]


def load_categories() -> CategorySystem:
    """The harmonized categories of the active config (what a caller passes as ``categories=``)."""
    return load_config("categories").system()  # type: ignore[attr-defined]
