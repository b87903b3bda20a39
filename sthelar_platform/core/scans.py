"""The reader for a scan as a lab has it: DICOM WSI, MRXS (OpenSlide), a vendor format we refuse by
name, or the TIFF family.

Only ingest opens such a scan; every later stage reads the platform's own pyramid (a TIFF).
"""

from __future__ import annotations

from pathlib import Path

from sthelar_platform.core.errors import InputError
from sthelar_platform.core.wsi import SlideReader, WholeSlide
from sthelar_platform.core.wsi_dicom import DicomSlide, is_dicom_file
from sthelar_platform.core.wsi_openslide import OpenSlideScan

# read through OpenSlide: only formats a fixture written from their documented layout tests (synth/_mrxs.py)
OPENSLIDE_FORMATS = (".mrxs",)
# folder-backed or proprietary formats no reader here is tested on: refused, naming a converter
UNREAD_FORMATS = {
    ".vsi": "Olympus VSI (an index file beside a folder of .ets files)",
    ".vms": "Hamamatsu VMS (a set of JPEG files)",
    ".czi": "Zeiss CZI",
    ".isyntax": "Philips iSyntax",
}
FIX_CONVERT = ("convert it to OME-TIFF with QuPath (File > Export images > OME TIFF), bfconvert "
               "(`bfconvert -pyramid-resolutions 6 -pyramid-scale 2 -tilex 512 -tiley 512 in out.ome.tif`) or "
               "`vips tiffsave in out.tif --tile --pyramid`, or to DICOM WSI with wsidicomizer")


def open_slide(path: str | Path, verify: bool = True) -> SlideReader:
    """A scan as a lab has it: a DICOM WSI folder or instance, an MRXS slide, or a TIFF-family file."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "image file does not exist", "check the path in the slide manifest")
    if path.is_dir() and (path / "Slidedat.ini").exists():
        raise InputError(path, "this is the data folder of an MRXS slide, not the slide",
                         f"point he_image at {path.name}.mrxs beside it")
    if path.is_dir() or is_dicom_file(path):
        return DicomSlide(path, verify)
    if path.suffix.lower() in OPENSLIDE_FORMATS:
        return OpenSlideScan(path, verify)
    kind = UNREAD_FORMATS.get(path.suffix.lower())
    if kind:
        raise InputError(path, f"{kind} is not read here", FIX_CONVERT)
    return WholeSlide(path, verify)
