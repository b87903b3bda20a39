"""Typed configuration: one schema module per YAML file of ``sthelar_platform/config/``, and their loaders.

A library module imports the schema it takes as an argument (``core.config.tiling.TilingConfig``); only
the edge calls the loaders (``load_config("tiling") -> TilingConfig``). Names resolve lazily, so importing
one schema does not import the others (nor make their source part of an asset's code version).
"""

from typing import TYPE_CHECKING

from sthelar_platform.core._lazy import lazy_exports

_EXPORTS = {
    "Section": "_base",
    "PipelineConfig": "pipeline", "IngestConfig": "pipeline", "HEImageConfig": "pipeline",
    "RegistrationConfig": "pipeline", "NonrigidConfig": "pipeline", "AutomationConfig": "pipeline",
    "OutputsConfig": "pipeline",
    "AnnotationConfig": "annotation", "CountsConfig": "annotation", "ReferenceEntry": "annotation",
    "ReferencesConfig": "annotation", "TangramConfig": "annotation", "ClusteringConfig": "annotation",
    "MarkersConfig": "annotation", "RuleConfig": "annotation", "CrosscheckConfig": "annotation",
    "AnnotationChecksConfig": "annotation",
    "CategoriesConfig": "categories", "GroupingSpec": "categories",
    "TilingConfig": "tiling", "PatchesConfig": "tiling", "TissueMaskConfig": "tiling",
    "ClassicalSegmenterConfig": "tiling", "CellViTSegmenterConfig": "tiling",
    "ReferenceSegmentationConfig": "tiling", "AgreementConfig": "tiling", "ExportsConfig": "tiling",
    "TrainingConfig": "training", "DatasetConfig": "training", "HFLayoutConfig": "training",
    "ScheduleConfig": "training", "TrainingRunConfig": "training", "EvaluationConfig": "training",
    "PostprocessConfig": "training", "InferenceConfig": "training",
    "DeploymentConfig": "deployment", "ComputeClass": "deployment", "LocalExecutorConfig": "deployment",
    "SyntheticConfig": "synthetic", "SyntheticSize": "synthetic", "World": "synthetic",
    "WorldExpression": "synthetic", "WorldAtlas": "synthetic", "WorldDeformation": "synthetic",
    "WorldHE": "synthetic", "HEStain": "synthetic", "HENuclei": "synthetic", "HECells": "synthetic",
    "HEArtefacts": "synthetic", "NucleusShape": "synthetic", "Structure": "synthetic", "TissueSpec": "synthetic",
    "FillerGenes": "synthetic",
    "PACKAGED_CONFIG_DIR": "loading", "CONFIG_NAMES": "loading", "config_dir": "loading", "config_path": "loading",
    "load_config": "loading", "config_version": "loading", "overrides_dir": "loading",
    "load_synthetic": "loading", "load_categories": "loading",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what a type checker sees; at run time each name loads with its own module
    from sthelar_platform.core.config._base import Section
    from sthelar_platform.core.config.annotation import (
        AnnotationChecksConfig,
        AnnotationConfig,
        ClusteringConfig,
        CountsConfig,
        CrosscheckConfig,
        MarkersConfig,
        ReferenceEntry,
        ReferencesConfig,
        RuleConfig,
        TangramConfig,
    )
    from sthelar_platform.core.config.categories import CategoriesConfig, GroupingSpec
    from sthelar_platform.core.config.deployment import ComputeClass, DeploymentConfig, LocalExecutorConfig
    from sthelar_platform.core.config.loading import (
        CONFIG_NAMES,
        PACKAGED_CONFIG_DIR,
        config_dir,
        config_path,
        config_version,
        load_categories,
        load_config,
        load_synthetic,
        overrides_dir,
    )
    from sthelar_platform.core.config.pipeline import (
        AutomationConfig,
        HEImageConfig,
        IngestConfig,
        NonrigidConfig,
        OutputsConfig,
        PipelineConfig,
        RegistrationConfig,
    )
    from sthelar_platform.core.config.synthetic import (
        FillerGenes,
        HEArtefacts,
        HECells,
        HENuclei,
        HEStain,
        NucleusShape,
        Structure,
        SyntheticConfig,
        SyntheticSize,
        TissueSpec,
        World,
        WorldAtlas,
        WorldDeformation,
        WorldExpression,
        WorldHE,
    )
    from sthelar_platform.core.config.tiling import (
        AgreementConfig,
        CellViTSegmenterConfig,
        ClassicalSegmenterConfig,
        ExportsConfig,
        PatchesConfig,
        ReferenceSegmentationConfig,
        TilingConfig,
        TissueMaskConfig,
    )
    from sthelar_platform.core.config.training import (
        DatasetConfig,
        EvaluationConfig,
        HFLayoutConfig,
        InferenceConfig,
        PostprocessConfig,
        ScheduleConfig,
        TrainingConfig,
        TrainingRunConfig,
    )
