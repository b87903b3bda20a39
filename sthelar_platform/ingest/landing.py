"""The landing area: slide folders users copy in, picked up only once their upload is complete.

Layout (``$STHELAR_HOME/landing/incoming/<slide_id>/``)::

    slide.yaml        one manifest entry: tissue, and optionally xenium_dir (default xenium/),
                      he_image (default the first *he_image.ome.tif below, else a folder
                      of DICOM *.dcm instances), alignment_csv,
                      reference, all relative to this folder (slide_id = the folder name)
    xenium/           the Xenium output bundle
    *he_image.ome.tif the H&E image

Uploads stay in their folder: every path slide.yaml names, and every symlink below the folder,
must resolve (symlinks followed) inside it, so a dropped folder cannot make the platform read
any other file on the machine. Operator manifests (``sthelar slides add``) keep absolute paths.

A folder is *ready* when slide.yaml parses, every required Xenium file and the H&E exist,
and nothing in it changed between two looks that are at least ``settle_s`` apart (same sizes,
same modification times, newest change older than ``settle_s``). A half-copied folder never
passes: a missing file fails the first rule, a file still growing fails the second.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from sthelar_platform.core.errors import InputError
from sthelar_platform.core.hashing import sha256_text
from sthelar_platform.core.ids import validate_slide_id
from sthelar_platform.ingest.manifest import SlideSpec, find_he_image, parse_slide
from sthelar_platform.ingest.xenium_bundle import REQUIRED_FILES

SLIDE_FILE = "slide.yaml"


@dataclass(frozen=True)
class LandingFolder:
    slide_id: str
    folder: Path
    signature: str                  # hash of every file's (path, size, mtime)
    newest_change: float            # epoch seconds
    missing: tuple[str, ...] = ()
    error: str | None = None
    spec: SlideSpec | None = None

    @property
    def complete(self) -> bool:
        return self.spec is not None and not self.missing and self.error is None


@dataclass
class LandingCursor:
    """What the sensor saw last time (``seen``) and which uploads it already requested (``done``)."""

    seen: dict[str, str] = field(default_factory=dict)
    done: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> LandingCursor:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(dict(data.get("seen", {})), dict(data.get("done", {})))

    def dump(self) -> str:
        return json.dumps({"seen": self.seen, "done": self.done}, sort_keys=True)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def _outside(path: Path, root: Path) -> bool:
    return not path.resolve().is_relative_to(root)


def confinement_problems(folder: Path, spec: SlideSpec) -> list[str]:
    """Paths of an upload that resolve outside its folder (symlinks followed); empty when confined."""
    root = folder.resolve()
    problems = [f"{name} {path} resolves to {path.resolve()}"
                for name, path in (("xenium_dir", spec.xenium_dir), ("he_image", spec.he_image),
                                   ("alignment_csv", spec.alignment_csv), ("reference", spec.reference))
                if path is not None and _outside(path, root)]
    for dirpath, dirnames, filenames in os.walk(folder):  # symlinks are checked, never followed here
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink() and _outside(p, root):
                problems.append(f"symlink {p.relative_to(folder)} points to {p.resolve()}")
    return problems


def inspect_folder(folder: Path) -> LandingFolder:
    """Completeness and a change signature of one landing folder (no file is read but slide.yaml)."""
    slide_id = folder.name
    stats = [(str(p.relative_to(folder)), p.stat()) for p in _files(folder)]
    signature = sha256_text(json.dumps([(n, s.st_size, s.st_mtime_ns) for n, s in stats]))[:16]
    newest = max((s.st_mtime for _, s in stats), default=0.0)
    base = LandingFolder(slide_id=slide_id, folder=folder, signature=signature, newest_change=newest)
    try:
        validate_slide_id(slide_id, str(folder))
    except InputError as exc:
        return replace(base, error=str(exc))
    entry = folder / SLIDE_FILE
    if not entry.exists():
        return replace(base, missing=(SLIDE_FILE,))
    try:
        row = yaml.safe_load(entry.read_text()) or {}
        if not isinstance(row, dict):
            raise InputError(entry, "slide.yaml must be a mapping", "write `tissue: ...` and the file paths")
        row = {"slide_id": slide_id, "xenium_dir": "xenium", **row}
        if "he_image" not in row:  # default: found as `sthelar slides add --folder` finds it
            found = find_he_image(folder)
            row["he_image"] = str(found.relative_to(folder)) if found else "he_image.ome.tif"
        spec = parse_slide(row, folder, entry, check_files=False)
    except (InputError, yaml.YAMLError) as exc:
        return replace(base, error=str(exc))
    if spec.slide_id != slide_id:
        return replace(base, error=f"slide.yaml names slide {spec.slide_id!r} inside folder {slide_id!r}")
    outside = confinement_problems(folder, spec)
    if outside:
        return replace(base, error=str(InputError(
            entry, f"uploads must stay inside their folder, but {'; '.join(outside[:3])}",
            "copy the files into the slide folder (or register the slide with `sthelar slides add`, "
            "where an operator's manifest may name any path)")))
    missing = [f"xenium/{f}" for f in REQUIRED_FILES if not (spec.xenium_dir / f).is_file()]
    if not any((spec.xenium_dir / m).exists() for m in ("morphology_focus", "morphology_focus.ome.tif", "morphology.ome.tif")):
        missing.append("xenium/morphology_focus")
    if not (spec.he_image.is_file() or spec.he_image.is_dir()):  # a DICOM WSI series is a folder
        missing.append(f"he_image: {spec.he_image.name}")
    for name, path in (("alignment_csv", spec.alignment_csv), ("reference", spec.reference)):
        if path is not None and not path.is_file():
            missing.append(f"{name}: {path.name}")
    return replace(base, missing=tuple(missing), spec=spec)


def scan(incoming: Path, cursor: LandingCursor, settle_s: float, now: float | None = None,
         ) -> tuple[list[LandingFolder], list[LandingFolder], LandingCursor]:
    """(ready uploads, waiting folders, next cursor). Ready = complete and unchanged since the last look."""
    now = time.time() if now is None else now
    ready: list[LandingFolder] = []
    waiting: list[LandingFolder] = []
    nxt = LandingCursor(seen={}, done=dict(cursor.done))
    if not incoming.is_dir():
        return ready, waiting, nxt
    for folder in sorted(p for p in incoming.iterdir() if p.is_dir() and not p.name.startswith(".")):
        f = inspect_folder(folder)
        nxt.seen[f.slide_id] = f.signature
        if cursor.done.get(f.slide_id) == f.signature:
            continue  # this exact upload was already requested
        stable = cursor.seen.get(f.slide_id) == f.signature and now - f.newest_change >= settle_s
        (ready if f.complete and stable else waiting).append(f)
    for f in ready:
        nxt.done[f.slide_id] = f.signature
    return ready, waiting, nxt
