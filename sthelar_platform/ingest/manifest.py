"""Slide manifests: which Xenium bundle, H&E image, alignment CSV and reference belong to a slide.

A manifest is YAML (``slides: [{slide_id, tissue, xenium_dir, he_image, alignment_csv?, reference?}]``)
or CSV with the same columns. Relative paths resolve against the manifest's folder.
Everything is validated on load, before any path is used.
"""

from __future__ import annotations

import builtins
import csv
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from sthelar_platform.core.atomic import file_lock, write_text_atomic
from sthelar_platform.core.errors import InputError
from sthelar_platform.core.ids import validate_slide_id

REQUIRED = ("slide_id", "tissue", "xenium_dir", "he_image")
OPTIONAL = ("alignment_csv", "reference", "synthetic", "patient_id")


@dataclass(frozen=True)
class SlideSpec:
    slide_id: str
    tissue: str
    xenium_dir: Path
    he_image: Path
    alignment_csv: Path | None = None
    reference: Path | None = None
    synthetic: bool = False
    patient_id: str | None = None  # slides of one patient stay in one split (dataset.split: patient)

    def to_record(self) -> dict:
        rec = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in rec.items() if v is not None}


def _rows(path: Path) -> list[dict]:
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="") as f:
                return [{k: v for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(f)]
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, csv.Error, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read manifest ({exc})", "write it as YAML with a 'slides:' list, or as CSV") from exc
    if not isinstance(data, dict) or not isinstance(data.get("slides"), list):
        raise InputError(path, "manifest has no 'slides:' list", "see README 'Running on real Xenium data' for the layout")
    return data["slides"]


def _resolve(base: Path, value: str | None) -> Path | None:
    if value in (None, ""):
        return None
    p = Path(str(value)).expanduser()
    return (p if p.is_absolute() else base / p).resolve()


def _required(base: Path, row: dict, field: str, source: Path) -> Path:
    path = _resolve(base, row[field])
    if path is None:
        raise InputError(source, f"slide {row.get('slide_id')}: `{field}` is empty", f"give the slide's {field} path")
    return path


def parse_slide(row: dict, base: Path, source: Path, check_files: bool = True) -> SlideSpec:
    """One validated manifest entry, its paths resolved against ``base``."""
    if not isinstance(row, dict):
        raise InputError(source, f"slide entry {row!r} is not a mapping", "give each slide as 'key: value' fields")
    missing = [k for k in REQUIRED if not row.get(k)]
    if missing:
        raise InputError(source, f"slide entry {row.get('slide_id', row)!r} lacks {', '.join(missing)}",
                         f"every slide needs {', '.join(REQUIRED)}")
    unknown = set(row) - set(REQUIRED) - set(OPTIONAL)
    if unknown:
        raise InputError(source, f"unknown manifest field(s) {sorted(unknown)}", f"allowed: {', '.join(REQUIRED + OPTIONAL)}")
    slide_id = validate_slide_id(str(row["slide_id"]), str(source))
    tissue = str(row["tissue"])
    if not tissue.replace("_", "").replace("-", "").isalnum():
        raise InputError(source, f"slide {slide_id}: invalid tissue name {tissue!r}", "use letters, digits, '_' or '-'")
    patient = row.get("patient_id")
    if patient is not None and not str(patient).replace("_", "").replace("-", "").isalnum():
        raise InputError(source, f"slide {slide_id}: invalid patient_id {patient!r}", "use letters, digits, '_' or '-'")
    spec = SlideSpec(
        slide_id=slide_id, tissue=tissue.lower(), patient_id=None if patient is None else str(patient),
        xenium_dir=_required(base, row, "xenium_dir", source), he_image=_required(base, row, "he_image", source),
        alignment_csv=_resolve(base, row.get("alignment_csv")), reference=_resolve(base, row.get("reference")),
        synthetic=str(row.get("synthetic", False)).lower() in ("true", "1", "yes"),
    )
    if check_files:
        # the H&E is a file, or a folder of DICOM instances (one DICOM WSI series)
        checks = [("xenium_dir", spec.xenium_dir, True), ("he_image", spec.he_image, None),
                  ("alignment_csv", spec.alignment_csv, False), ("reference", spec.reference, False)]
        for field, p, is_dir in checks:
            if p is None:
                continue
            if not p.exists():
                raise InputError(source, f"slide {slide_id}: {field} {p} does not exist",
                                 "fix the path (relative paths resolve against the manifest's folder)")
            if is_dir is not None and is_dir != p.is_dir():
                raise InputError(source, f"slide {slide_id}: {field} {p} should be a {'folder' if is_dir else 'file'}",
                                 "point xenium_dir at the Xenium output folder, he_image at the scan (a file, or a "
                                 "DICOM WSI series folder) and the others at files")
    return spec


def load_manifest(path: str | Path, check_files: bool = True) -> list[SlideSpec]:
    """Parse and validate a manifest; duplicate slide ids are an error."""
    path = Path(path).resolve()
    if not path.exists():
        raise InputError(path, "manifest not found", "create it or pass the right path")
    specs = [parse_slide(r, path.parent, path, check_files) for r in _rows(path)]
    seen: set[str] = set()
    for s in specs:
        if s.slide_id in seen:
            raise InputError(path, f"duplicate slide id {s.slide_id!r}", "give every slide a unique slide_id")
        seen.add(s.slide_id)
    return specs


# in this order: the Xenium naming, then vendor whole-slide formats, then any (OME-)TIFF
HE_PATTERNS = ("*he_image.ome.tif", "*.svs", "*.ndpi", "*.mrxs", "*.ome.tif", "*.ome.tiff", "*.tif", "*.tiff")


def find_he_image(folder: Path) -> Path | None:
    """The H&E of a slide folder: the first match of ``HE_PATTERNS`` below it, morphology images aside; else
    the folder holding its DICOM instances (``*.dcm``: a DICOM WSI series).
    """
    # a Xenium bundle in a subfolder holds no H&E (a bundle that is the folder itself: morphology names aside)
    bundles = [b.parent for b in folder.rglob("experiment.xenium") if b.parent != folder]
    for pattern in HE_PATTERNS:
        hes = [p for p in sorted(folder.rglob(pattern)) if "morphology" not in p.name
               and not any(p.is_relative_to(b) for b in bundles)]
        if hes:
            return hes[0]
    series = sorted({p.parent for p in folder.rglob("*.dcm") if not any(p.is_relative_to(b) for b in bundles)})
    return series[0] if series else None


def specs_from_folder(folder: str | Path, tissue: str, slide_id: str | None = None) -> SlideSpec:
    """A slide from a folder holding a Xenium bundle (``xenium/`` or the folder itself) and an H&E image."""
    folder = Path(folder).resolve()
    xen = folder / "xenium" if (folder / "xenium" / "experiment.xenium").exists() else folder
    he = find_he_image(folder)
    if he is None:
        raise InputError(folder, "no H&E image (*he_image.ome.tif, .svs, .ndpi, .mrxs, .tif or a folder of DICOM .dcm) "
                         "found",
                         "pass a manifest naming the H&E image instead")
    csvs = sorted(folder.rglob("*alignment.csv"))
    row = {"slide_id": slide_id or folder.name.lower().replace(" ", "_"), "tissue": tissue, "xenium_dir": str(xen),
           "he_image": str(he)}
    if csvs:
        row["alignment_csv"] = str(csvs[0])
    return parse_slide(row, folder, folder)


class SlideCatalog:
    """The registered slides of a platform home (``catalog.yaml``), written atomically."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def list(self) -> list[SlideSpec]:
        if not self.path.exists():
            return []
        return load_manifest(self.path, check_files=False)

    def get(self, slide_id: str) -> SlideSpec:
        validate_slide_id(slide_id)
        for s in self.list():
            if s.slide_id == slide_id:
                return s
        raise InputError(self.path, f"slide {slide_id!r} is not registered", "run `sthelar slides add` first")

    def add(self, specs: builtins.list[SlideSpec], replace: bool = False,
            lock_timeout_s: float = 60.0) -> builtins.list[SlideSpec]:
        """Register ``specs`` (read, merge, rewrite under a file lock: two ``slides add`` at once both land)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.path.with_name(self.path.name + ".lock"), lock_timeout_s) as got:
            if not got:
                raise InputError(self.path, f"the catalog stayed locked for {lock_timeout_s:.0f} s",
                                 "wait for the other `slides add` (or the landing sensor) to finish, then retry")
            current = {s.slide_id: s for s in self.list()}
            for s in specs:
                if s.slide_id in current and current[s.slide_id] != s and not replace:
                    raise InputError(self.path, f"slide id {s.slide_id!r} is already registered with other files",
                                     "choose another slide_id, or pass --replace to re-point it")
                current[s.slide_id] = s
            write_text_atomic(self.path, yaml.safe_dump({"slides": [s.to_record() for s in current.values()]},
                                                        sort_keys=False))
            return list(current.values())
