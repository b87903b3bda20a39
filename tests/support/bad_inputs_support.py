"""Helpers of the bad-input corpus (tests/bad_inputs/): private case homes, breaking files without
touching the hard-linked originals, running a stage, and the one assertion every case makes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from dagster import AssetKey, DagsterInstance, materialize

import sthelar_definitions
from sthelar_platform.core.hashing import VERSION_MARKER
from sthelar_platform.ingest.manifest import SlideSpec

SLIDE = "tiny"
SLIDE_ASSETS = sthelar_definitions.ALL_ASSETS
COHORT_ASSETS = sthelar_definitions.COHORT_ASSETS
OUTPUT_ROOTS = ("warehouse", "exports", "models")


@dataclass
class CaseHome:
    """A private copy of the good home, its inputs re-pointed at private copies a case may break."""

    home: Path
    spec: SlideSpec
    config_dir: Path

    @property
    def bundle(self) -> Path:
        return self.spec.xenium_dir

    def output(self, stage: str) -> Path:
        return self.home / "warehouse" / stage / SLIDE


def replace_file(path: Path, data: bytes | str) -> Path:
    """Give ``path`` new content without touching the hard-linked original (unlink, then write)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    return replace_file(path, data[: int(len(data) * keep)])


def outputs_digest(home: Path) -> dict[str, str]:
    """sha256 of every file of every stage output (the version markers included)."""
    digest = {}
    for root in OUTPUT_ROOTS:
        for p in sorted((home / root).rglob("*")) if (home / root).exists() else []:
            if p.is_file():
                digest[str(p.relative_to(home))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return digest


def link_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, copy_function=os.link, symlinks=True)


def run(case: CaseHome, *assets: str, cohort: bool = False):
    """Materialize ``assets`` of the case home (upstream outputs are on disk already)."""
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("slides", [SLIDE])
    return materialize([*SLIDE_ASSETS, *COHORT_ASSETS], selection=[AssetKey(a) for a in assets],
                       partition_key=None if cohort else SLIDE, instance=instance,
                       resources=sthelar_definitions.build_resources(str(case.home)), raise_on_error=False)


def _user_error(error) -> str:
    """The message of the platform's own exception (the first in the chain that is not Dagster's wrapper)."""
    while error.cause is not None and (error.cls_name or "").startswith("Dagster"):
        error = error.cause
    return error.message.split(": ", 1)[1].strip() if ": " in error.message else error.message.strip()


def step_errors(result) -> list[str]:
    return [_user_error(e.event_specific_data.error) for e in result.all_events if e.event_type_value == "STEP_FAILURE"]


CORPUS = {"tried": 0, "lost": 0}


def assert_refused(message: str, file: str | Path, problem: str, before: dict[str, str], home: Path,
                   changed: tuple[str, ...] = ()) -> None:
    """One line naming ``file`` and ``problem`` with a fix; every output but ``changed`` byte-identical."""
    CORPUS["tried"] += 1
    after = outputs_digest(home)
    lost = {k for k in before if before[k] != after.get(k) and not k.startswith(changed)} if changed else \
        {k for k in before if before[k] != after.get(k)}
    CORPUS["lost"] += bool(lost)
    assert not lost, f"earlier outputs changed: {sorted(lost)[:5]}"
    assert not [k for k in after if k not in before and VERSION_MARKER not in k], "a failed run left new output files"
    assert "\n" not in message, f"not one line: {message!r}"
    assert str(file) in message, f"{file} not named in: {message}"
    assert problem.lower() in message.lower(), f"{problem!r} not in: {message}"
    assert "Fix: " in message and len(message.split("Fix: ", 1)[1]) > 10, f"no fix in: {message}"
