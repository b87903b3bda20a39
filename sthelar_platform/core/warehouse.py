"""The warehouse: every stage's output folder and the files in it, named once.

A stage writes ``warehouse/<stage>/<slide_id>/`` (exports, models and the dataset have folders of their
own); the stage that writes a file and every stage, asset, dashboard or benchmark that reads it take the
name from here, so a renamed file cannot leave a reader behind::

    XeniumSlideFolder(storage.stage_dir("xenium_slide", slide_id)).nucleus_boundaries
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, overload


class _File:
    """A file (or sub-folder) of a stage folder: ``Folder(root).name`` is its path."""

    def __init__(self, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> _File: ...
    @overload
    def __get__(self, obj: StageFolder, owner: type) -> Path: ...
    def __get__(self, obj: StageFolder | None, owner: type) -> _File | Path:
        return self if obj is None else obj.root / self.name


class StageFolder:
    """One stage's output folder."""

    stage: ClassVar[str]
    summary = _File("summary.json")

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"


class XeniumSlideFolder(StageFolder):
    stage = "xenium_slide"
    cells = _File("cells.parquet")
    nucleus_boundaries = _File("nucleus_boundaries.parquet")
    cell_boundaries = _File("cell_boundaries.parquet")
    transcripts = _File("transcripts.parquet")
    expression = _File("expression.h5ad")
    thumbnail = _File("thumbnail_dapi.png")


class HEImageFolder(StageFolder):
    stage = "he_image"
    image = _File("he_image.ome.tif")
    thumbnail = _File("thumbnail_he.png")


class RegistrationFolder(StageFolder):
    stage = "he_registration"
    registration = _File("registration.json")
    transform_csv = _File("transform.csv")
    he_nuclei = _File("he_nuclei.parquet")
    overlay = _File("overlay.png")
    overlay_zoom = _File("overlay_zoom.png")
    residual_map = _File("residual_map.png")


class RegisteredHEFolder(StageFolder):
    stage = "registered_he"
    sdata = _File("sdata.zarr")
    image_meta = _File("he_image.json")


class NucleusCountsFolder(StageFolder):
    stage = "nucleus_counts"
    nucleus = _File("nucleus.h5ad")


class CellCountsFolder(StageFolder):
    stage = "cell_counts"
    cell = _File("cell.h5ad")
    cytoplasm = _File("cytoplasm.h5ad")


class TangramLabelsFolder(StageFolder):
    stage = "tangram_labels"
    labels = _File("tangram_labels.parquet")
    category_probabilities = _File("category_probabilities.parquet")
    centroids = _File("reference_centroids.parquet")        # the atlas' category centroids, for the cross-check
    singler_reference = _File("singler_reference.h5ad")    # ... and its log expression on Tangram's genes, for SingleR


class ClustersFolder(StageFolder):
    stage = "clusters"
    clusters = _File("clusters.parquet")
    markers = _File("markers.parquet")
    marker_scores = _File("marker_scores.parquet")


class CellTypesFolder(StageFolder):
    stage = "cell_types"
    cell_labels = _File("cell_labels.parquet")
    cluster_review = _File("cluster_review.parquet")
    crosscheck_agreement = _File("crosscheck_agreement.parquet")
    category_map = _File("category_map.png")


class PatchesFolder(StageFolder):
    """``patches_40x`` / ``patches_20x``: one folder per magnification."""

    stage = "patches"
    patches = _File("patches.parquet")
    images = _File("images")
    labels = _File("labels")
    overview = _File("patches_overview.png")

    @staticmethod
    def stage_of(magnification: str) -> str:
        return f"patches_{magnification}"


class ReferenceSegmentationFolder(StageFolder):
    """One sub-folder per magnification, each with one ``<patch>.npz`` per patch and ``counts.parquet``."""

    stage = "reference_segmentation"
    COUNTS: ClassVar[str] = "counts.parquet"

    def magnification(self, magnification: str) -> Path:
        return self.root / magnification


class AgreementFolder(StageFolder):
    stage = "segmentation_agreement"
    agreement = _File("agreement.parquet")

    def distributions(self, magnification: str) -> Path:
        return self.root / f"distributions_{magnification}.png"

    def quality_map(self, magnification: str) -> Path:
        return self.root / f"quality_map_{magnification}.png"


class SlideExportFolder(StageFolder):
    """``exports/<slide_id>/``."""

    stage = "slide_export"
    summary = _File("export_summary.json")          # the training dataset reads which magnification was skipped
    cell_labels = _File("cell_labels.parquet")
    cellvit = _File("cellvit")
    pannuke = _File("pannuke")
    sdata = _File("sdata.zarr")


class CellViTLayoutFolder(StageFolder):
    """A CellViT-style patch folder (``exports/<slide>/cellvit/<mag>/<grouping>/`` and the training dataset's
    ``exports/dataset/<mag>/<grouping>/``): CellViT's own file names.
    """

    stage = "slide_export"
    images = _File("images")
    labels = _File("labels")
    cell_count = _File("cell_count.csv")
    types = _File("types.csv")
    patches = _File("patches.csv")                  # the platform's per-patch QC beside CellViT's files
    splits = _File("splits.csv")                    # training dataset only
    class_weights = _File("class_weights.json")     # training dataset only

    def image(self, name: str) -> Path:
        return self.images / f"{name}.png"

    def label(self, name: str) -> Path:
        return self.labels / f"{name}.npz"


class ModelFolder(StageFolder):
    """``models/cellvit_<grouping>/``."""

    stage = "cellvit"
    best = _File("best.pt")
    last = _File("last.pt")
    card = _File("model.json")
    history = _File("history.csv")
    loss_curve = _File("loss_curve.png")


class EvaluationFolder(StageFolder):
    """``models/evaluation/``: one ``<grouping>.json`` per model and their summary."""

    stage = "model_evaluation"

    def grouping(self, grouping: str) -> Path:
        return self.root / f"{grouping}.json"


class PredictionsFolder(StageFolder):
    stage = "slide_predictions"
    cells = _File("predicted_cells.parquet")
    agreement = _File("agreement.csv")
    confusion = _File("confusion.csv")
