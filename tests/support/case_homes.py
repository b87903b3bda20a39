"""Case homes: one good slide home built once, and cheap private copies of it (outputs hard-linked,
inputs re-pointed at private copies) that a test may break or rewrite. Used by the bad-input corpus
(tests/bad_inputs/) and the H&E format tests; also the corpus's one assertion.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from dagster import AssetKey, DagsterInstance, materialize

import sthelar_definitions
from sthelar_platform.core.hashing import VERSION_MARKER
from sthelar_platform.ingest.manifest import SlideCatalog, SlideSpec, load_manifest

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


def build_good_home(root: Path, cohort: Path) -> tuple[Path, SlideSpec]:
    """The tiny slide of ``cohort`` materialized through its exports and the training dataset, under ``root``."""
    spec = load_manifest(cohort / "manifest.yaml")[0]
    home = root / "home"
    SlideCatalog(home / "catalog.yaml").add([spec])
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("slides", [SLIDE])
    resources = sthelar_definitions.build_resources(str(home))
    r = materialize(SLIDE_ASSETS, partition_key=SLIDE, instance=instance, resources=resources, raise_on_error=False)
    assert r.success, "the good baseline must build"
    r = materialize([*SLIDE_ASSETS, *COHORT_ASSETS], selection=[AssetKey("training_dataset")], instance=instance,
                    resources=resources, raise_on_error=False)
    assert r.success, "the good baseline's training dataset must build"
    return home, spec


def make_case(base: Path, spec: SlideSpec, tmp_path: Path) -> CaseHome:
    """A private copy of the good home ``base`` whose inputs are private (hard-linked) copies too."""
    home = tmp_path / "home"
    home.mkdir()
    for root in OUTPUT_ROOTS:
        if (base / root).exists():
            link_tree(base / root, home / root)  # cheap; every write is a new file (atomic outputs)
    for name in ("lineage.duckdb", "catalog.yaml"):
        shutil.copy2(base / name, home / name)  # written in place: real copies
    inputs = tmp_path / "inputs"
    link_tree(spec.xenium_dir, inputs / "xenium")
    copies = {}
    for field in ("he_image", "alignment_csv", "reference"):
        src = getattr(spec, field)
        (inputs / field).mkdir(parents=True)
        copies[field] = inputs / field / src.name
        os.link(src, copies[field])
    private = replace(spec, xenium_dir=inputs / "xenium", **copies)
    SlideCatalog(home / "catalog.yaml").add([private], replace=True)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    return CaseHome(home=home, spec=private, config_dir=config_dir)


def repoint(case: CaseHome, **paths: Path | None) -> CaseHome:
    """Register the case's slide with some inputs replaced (e.g. another H&E file, no alignment CSV)."""
    case.spec = replace(case.spec, **paths)
    SlideCatalog(case.home / "catalog.yaml").add([case.spec], replace=True)
    return case


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


def the_one_error(case: CaseHome, *assets: str, cohort: bool = False) -> str:
    """Run ``assets`` expecting a failed run with exactly one failed step; that step's message."""
    result = run(case, *assets, cohort=cohort)
    errors = step_errors(result)
    assert not result.success and len(errors) == 1, errors
    return errors[0]


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
