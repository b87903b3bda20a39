"""Schema of ``synthetic.yaml``: the generator's sizes, tissues, expression and the worlds it draws slides in."""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import Field, PositiveInt, model_validator

from sthelar_platform.core.config._base import Num, PosNum, Range, Section, Vec3

T = TypeVar("T")


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


class NucleusShape(Section):
    axes: Range                                   # semi-axes of the nucleus ellipse, µm
    irregularity: Num = Field(ge=0)               # amplitude of the outline's wobble
    darkness: PosNum                              # hematoxylin density (x the slide's)
    expansion: PosNum                             # the cell reaches this far beyond its nucleus, µm
    oriented: Literal["flow", "vessel"] | None = None   # nuclei aligned with the tissue's flow or a vessel's wall


class Structure(Section):
    kind: Literal["band", "nest", "gland", "vessel"]
    per_mm2: Num = Field(default=0.0, ge=0)       # nests, glands, vessels per mm² of tissue
    radius_um: Range | None = None
    wall_um: PosNum | None = None                 # glands and vessels
    width_um: Range | None = None                 # bands
    region: str | None = None                     # the region a nest or band paints

    @model_validator(mode="after")
    def _kind_has_its_sizes(self) -> Structure:
        need = {"band": ("width_um",), "nest": ("radius_um", "region"), "gland": ("radius_um", "wall_um"),
                "vessel": ("radius_um", "wall_um")}[self.kind]
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"a {self.kind} needs {', '.join(missing)}")
        return self

    @staticmethod
    def given(value: T | None) -> T:
        """A size the validator made sure this kind of structure has."""
        if value is None:
            raise ValueError("structure size missing (the config validator requires it)")
        return value


class TissueSpec(Section):
    structures: list[Structure]
    composition: dict[str, dict[str, Num]]        # region -> category -> share


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
    shapes: dict[str, NucleusShape]
    density: dict[str, Num]
    eosin: dict[str, Num]
    tissues: dict[str, TissueSpec]
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
