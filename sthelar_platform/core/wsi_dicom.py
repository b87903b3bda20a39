"""DICOM whole-slide images (Supplement 145) read through wsidicom, behind the whole-slide interface.

A DICOM scan is a folder of instances: one per pyramid level (or several, when a level is split
into concatenation parts or has several focal planes), plus label and overview images, all of one
series. What makes such a folder unusable is checked from the headers before any pixel is read,
each with its own one-line error: no whole-slide instance at all (a CT, a DICOMDIR alone), volume
images of two series, a concatenation part or the full-resolution level missing.

The pixel size is the ``PixelSpacing`` of the shared functional groups (mm, as DICOM writes it);
the levels are those of the file, whatever their steps (scanners write 2x or 4x). wsidicom and
pydicom are imported on first use: only ingest opens a DICOM scan.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sthelar_platform.core.errors import InputError
from sthelar_platform.core.wsi import SlideLevel, SlideReader, level_downsample

if TYPE_CHECKING:
    from wsidicom import WsiDicom

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
FIX_SERIES = "point he_image at the folder holding the DICOM instances of the H&E scan's one series"
FIX_COPY = "copy every instance of the series again from the archive (PACS export or the scanner's output folder)"


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: ``DICM`` after the 128-byte preamble, whatever its name."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files in and below ``folder`` (hidden files aside), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and is_dicom_file(p))


@dataclass(frozen=True)
class _Instance:
    path: Path
    sop_class: str
    sop_class_name: str
    series: str
    image_type: tuple[str, ...]
    concatenation: str | None
    concatenation_total: int | None

    @property
    def is_volume(self) -> bool:
        return self.sop_class == WSI_SOP_CLASS and len(self.image_type) > 2 and self.image_type[2] == "VOLUME"


def _instance(path: Path) -> _Instance:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises InvalidDicomError, EOFError, ... for damaged headers
        raise InputError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})", FIX_COPY) from exc
    sop = str(ds.get("SOPClassUID", ""))
    name = getattr(ds.get("SOPClassUID"), "name", sop) or "no SOP class"
    total = ds.get("InConcatenationTotalNumber")
    return _Instance(path=path, sop_class=sop, sop_class_name=str(name), series=str(ds.get("SeriesInstanceUID", "")),
                     image_type=tuple(str(v).upper() for v in (ds.get("ImageType") or ())),
                     concatenation=str(ds["ConcatenationUID"].value) if "ConcatenationUID" in ds else None,
                     concatenation_total=int(total) if total is not None else None)


def series_instances(source: Path) -> list[Path]:
    """The whole-slide instances of the one series at ``source`` (a folder, or one DICOM file).

    Raises an InputError naming ``source`` for a folder with no whole-slide image, volume images of
    more than one series, a missing concatenation part, or no full-resolution level.
    """
    files = dicom_files(source) if source.is_dir() else [source]
    if not files:
        raise InputError(source, "the folder holds no DICOM file (no 'DICM' header in any file)", FIX_SERIES)
    instances = [_instance(p) for p in files]
    wsi = [i for i in instances if i.sop_class == WSI_SOP_CLASS]
    if not wsi:
        kinds = sorted({i.sop_class_name for i in instances})
        raise InputError(source, f"{len(files)} DICOM file(s) but no whole-slide microscopy image (SOP class "
                         f"{', '.join(kinds)}): not a DICOM WSI", "export the H&E scan as DICOM WSI (VL Whole Slide "
                         "Microscopy Image Storage) or as SVS / OME-TIFF")
    volume_series: dict[str, list[_Instance]] = defaultdict(list)
    for i in wsi:
        if i.is_volume:
            volume_series[i.series].append(i)
    if len(volume_series) > 1:
        where = "; ".join(f"series …{uid[-12:]} ({len(v)} level instance(s), e.g. {v[0].path.relative_to(source)})"
                          for uid, v in sorted(volume_series.items()))
        raise InputError(source, f"volume images of {len(volume_series)} series in one folder ({where})", FIX_SERIES)
    if not volume_series:
        raise InputError(source, "the DICOM WSI instances hold labels or overviews only, no VOLUME (pyramid) image",
                         FIX_COPY)
    series, volumes = next(iter(volume_series.items()))
    _check_complete(source, volumes)
    return [i.path for i in wsi if i.series == series]


def _check_complete(source: Path, volumes: list[_Instance]) -> None:
    parts: dict[str, list[_Instance]] = defaultdict(list)
    for i in volumes:
        if i.concatenation:
            parts[i.concatenation].append(i)
    for uid, found in parts.items():
        total = found[0].concatenation_total
        if total is not None and len(found) < total:
            raise InputError(source, f"a level split into {total} concatenation parts has {len(found)} here "
                             f"(concatenation …{uid[-12:]}): an instance is missing", FIX_COPY)
    # ImageType value 4 is RESAMPLED for a level downsampled from a finer one, NONE for the scan itself
    if all(len(i.image_type) > 3 and i.image_type[3] == "RESAMPLED" for i in volumes):
        raise InputError(source, f"every one of the {len(volumes)} VOLUME instance(s) is a RESAMPLED level: the "
                         "full-resolution instance (ImageType …\\VOLUME\\NONE, the largest file) is missing", FIX_COPY)


class DicomSlide(SlideReader):
    """One DICOM WSI series: the same interface as :class:`~sthelar_platform.core.wsi.WholeSlide`."""

    axes = "YXS"
    all_levels_tiled = True

    def __init__(self, path: str | Path, verify: bool = True):
        """``verify`` is accepted for the interface: the headers are always checked, tiles when decoded."""
        from wsidicom import WsiDicom

        self.path = Path(path)
        instances = series_instances(self.path)
        try:
            self._wsi: WsiDicom = WsiDicom.open(instances)
        except Exception as exc:  # noqa: BLE001 - wsidicom raises its own types for inconsistent series
            raise InputError(self.path, f"wsidicom cannot open the series ({type(exc).__name__}: {exc})",
                             FIX_COPY) from exc
        try:
            self._pyramid = list(self._wsi.pyramid.levels)
            base = self._pyramid[0]
            header = base.datasets[0]
            self._rgb = int(header.samples_per_pixel) == 3
            self.dtype = f"uint{int(header.bits)}"
            self.compression = str(getattr(base.default_instance.image_data.transfer_syntax, "name", "unknown"))
            mpp = base.mpp
            self.mpp = float(mpp.width) if mpp is not None and float(mpp.width) > 0 else None
            self.mpp_source = "DICOM PixelSpacing" if self.mpp is not None else "none"
        except BaseException:
            self._wsi.close()
            raise

    @property
    def levels(self) -> list[SlideLevel]:
        h0, w0 = self._pyramid[0].size.height, self._pyramid[0].size.width
        return [SlideLevel(lv.size.height, lv.size.width, level_downsample((h0, w0), (lv.size.height, lv.size.width)))
                for lv in self._pyramid]

    @property
    def is_rgb(self) -> bool:
        return self._rgb

    @property
    def level0_shape(self) -> tuple[int, ...]:
        return (self.height, self.width, 3 if self.is_rgb else 1)

    def read_region(self, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """One window of one level as ``(h, w, 3)``; only the frames it touches decode."""
        try:
            block: Any = self._wsi.read_region((x0, y0), self._pyramid[level].level, (w, h), as_array=True)
        except Exception as exc:  # noqa: BLE001 - codecs and wsidicom raise their own types for damaged frames
            raise InputError(self.path, f"DICOM frames cannot be read ({type(exc).__name__}: {exc}); an instance is "
                             "damaged or truncated", FIX_COPY) from exc
        block = np.asarray(block)
        return block[..., :3] if block.ndim == 3 else block

    def close(self) -> None:
        self._wsi.close()
