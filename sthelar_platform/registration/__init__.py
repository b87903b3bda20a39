"""Registration: the H&E -> Xenium affine (alignment CSV, refined or automatic), measured in µm, and the
H&E as a SpatialData image in Xenium coordinates.
"""

from sthelar_platform.core._lazy import lazy_exports

_EXPORTS = {
    "register_slide": "slide",
    "SlideRegistration": "record",
    "passed_registration": "record",
    "quality_failures": "slide",
    "read_alignment_csv": "transform",
    "register": "transform",
    "measure": "transform",
    "RegistrationQC": "transform",
    "write_registered_he": "registered_he",
    "open_registered_he": "registered_he",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
