"""Model: the cross-slide training dataset, CellViT training and evaluation, whole-slide predictions
(the network itself is in ``model.cellvit``).
"""

from sthelar_platform.core._lazy import lazy_exports

_EXPORTS = {
    "write_training_dataset": "dataset",
    "split_patches": "dataset",
    "write_sthelar_layout": "layouts",
    "write_cellvit_folds": "layouts",
    "write_hf_layout": "layouts",
    "train_cellvit": "training",
    "schedule_for": "training",
    "evaluate_model": "evaluation",
    "model_id": "evaluation",
    "predict_slide": "predictions",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
