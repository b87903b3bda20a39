"""Schema of ``training.yaml``: the training dataset, CellViT schedules, evaluation, post-processing, inference."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from sthelar_platform.core.config._base import Num, PosNum, Section


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
    fractions: dict[str, float]                       # train / val / test

    @model_validator(mode="after")
    def _fractions_name_the_splits(self) -> DatasetConfig:
        if set(self.fractions) != {"train", "val", "test"}:
            raise ValueError(f"dataset.fractions must give train, val and test, not {sorted(self.fractions)}")
        return self
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
