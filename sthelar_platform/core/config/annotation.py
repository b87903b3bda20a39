"""Schema of ``annotation.yaml``: counts, reference atlases, Tangram, clustering, markers, rule, checks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from sthelar_platform.core.config._base import Num, PosNum, Range, Section


class CountsConfig(Section):
    qv_min: Num = Field(ge=0)


class ReferenceEntry(Section):
    file: str | None = None                # relative to $STHELAR_HOME/references unless absolute
    label_column: str | None = None


class ReferencesConfig(Section):
    default: ReferenceEntry                # what a tissue's own entry does not say
    tissues: dict[str, ReferenceEntry]
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
