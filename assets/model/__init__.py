"""Model assets: the cross-slide training dataset, the CellViT models per grouping, their evaluation
(cohort assets) and the per-slide whole-slide predictions.
"""

from assets.model.dataset import training_dataset
from assets.model.evaluation import model_evaluation
from assets.model.predictions import slide_predictions
from assets.model.training import cellvit_detailed, cellvit_grouped

COHORT_ASSETS = [training_dataset, cellvit_detailed, cellvit_grouped, model_evaluation]
PREDICTION_ASSETS = [slide_predictions]
