"""Tiling assets: patches and masks at 40x / 20x, the independent H&E segmentation, per-patch agreement with
its blocking check, and the per-slide exports.
"""

from assets.tiling.agreement import segmentation_agreement
from assets.tiling.exports import slide_export
from assets.tiling.patches import patches_20x, patches_40x
from assets.tiling.reference_segmentation import reference_segmentation

ASSETS = [patches_40x, patches_20x, reference_segmentation, segmentation_agreement, slide_export]
