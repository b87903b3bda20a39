"""The reader for a scan as a lab has it: DICOM WSI, a vendor format we refuse by name, or the TIFF family.

Only ingest opens such a scan; every later stage reads the platform's own pyramid (a TIFF).
"""

from __future__ import annotations

from pathlib import Path

from sthelar_platform.core.errors import InputError
from sthelar_platform.core.wsi import SlideReader, WholeSlide
from sthelar_platform.core.wsi_dicom import DicomSlide, is_dicom_file

# folder-backed or proprietary formats that neither tifffile nor wsidicom reads: refused, naming a converter
UNREAD_FORMATS = {
    ".mrxs": "3DHISTECH MRXS (an index file beside a folder of .dat files)",
    ".vsi": "Olympus VSI (an index file beside a folder of .ets files)",
    ".vms": "Hamamatsu VMS (a set of JPEG files)",
    ".czi": "Zeiss CZI",
    ".isyntax": "Philips iSyntax",
}
FIX_CONVERT = ("convert it to OME-TIFF with QuPath (File > Export images > OME TIFF), bfconvert "
               "(`bfconvert -pyramid-resolutions 6 -pyramid-scale 2 -tilex 512 -tiley 512 in out.ome.tif`) or "
               "`vips tiffsave in out.tif --tile --pyramid`, or to DICOM WSI with wsidicomizer")


def open_slide(path: str | Path, verify: bool = True) -> SlideReader:
    """A scan as a lab has it: a DICOM WSI folder or instance, or a TIFF-family file."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "image file does not exist", "check the path in the slide manifest")
    if path.is_dir() or is_dicom_file(path):
        return DicomSlide(path, verify)
    kind = UNREAD_FORMATS.get(path.suffix.lower())
    if kind:
        raise InputError(path, f"{kind} is not read here", FIX_CONVERT)
    return WholeSlide(path, verify)
