"""Annotation: transcript counts, Tangram label transfer, Leiden clusters and markers, the accept/override
rule and an independent cross-check.
"""

from sthelar_platform.core._lazy import lazy_exports

_EXPORTS = {
    "slide_count_tables": "counts",
    "ReferenceSpec": "references",
    "reference_spec": "references",
    "load_reference": "references",
    "write_counts": "counts",
    "write_tangram_labels": "tangram",
    "write_clusters": "clustering",
    "write_cell_types": "cell_types",
    "annotation_failures": "cell_types",
    "load_overrides": "rule",
    "label_cells": "rule",
    "centroid_labels": "crosscheck",
    "hard_labels": "tangram",
    "raw_scores": "tangram",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
