"""Tiling: 256 px patches with instance / type / cell-id masks at 40x and 20x, the independent H&E
segmentation, per-patch agreement QC and the per-slide exports.
"""

from sthelar_platform.core._lazy import lazy_exports

_EXPORTS = {
    "write_patches": "patches",
    "load_labels": "patches",
    "save_npz": "patches",
    "load_nucleus_polygons": "masks",
    "rasterize_region": "masks",
    "classical_segmenter": "reference_segmentation",
    "segment_patches": "reference_segmentation",
    "ClassicalSegmenter": "reference_segmentation",
    "patch_agreement": "agreement",
    "slide_agreement": "agreement",
    "distribution_summary": "agreement",
    "write_slide_agreement": "agreement",
    "patch_quality_failures": "agreement",
    "write_slide_export": "exports",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
