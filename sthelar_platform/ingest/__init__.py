"""Ingest: validate and read a Xenium bundle (spatialdata-io) and the H&E image; slide manifests and the
landing area where uploads arrive.
"""

from sthelar_platform.core._lazy import lazy_exports

_EXPORTS = {
    "ingest_xenium": "xenium",
    "Generation": "generation",
    "detect_generation": "generation",
    "BundleTables": "bundle_reader",
    "read_bundle": "bundle_reader",
    "XeniumIngestSummary": "xenium",
    "validate_bundle": "xenium_bundle",
    "BundleInfo": "xenium_bundle",
    "ingest_he": "he_image",
    "validate_he": "he_image",
    "magnification_of": "he_image",
    "HEImageSummary": "he_image",
    "SlideSpec": "manifest",
    "SlideCatalog": "manifest",
    "load_manifest": "manifest",
    "specs_from_folder": "manifest",
    "LandingCursor": "landing",
    "inspect_folder": "landing",
    "scan": "landing",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
