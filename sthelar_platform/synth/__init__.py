"""Synth: SYNTHETIC Xenium-format slides with matching H&E, reference atlases and ground truth (the embedded
default data and the tests' fixtures). Private modules draw the tissue, expression and images.
"""

from sthelar_platform.core._lazy import lazy_exports

_EXPORTS = {
    "SIZES": "flavours",
    "SyntheticSlide": "cohort",
    "synthesize_slide": "cohort",
    "synthesize_reference": "cohort",
    "synthesize_cohort": "cohort",
    "true_he_to_um": "cohort",
    "FLAVOURS": "flavours",
    "QUIRKS": "flavours",
    "TransformSpec": "transform",
    "write_alignment_csv": "transform",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
