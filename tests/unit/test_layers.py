"""The layer rules of the code base, checked on the source: the library stays free of Dagster and of
config reads, every stage lists its public API, and the stage names match across the three layers."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "sthelar_platform"
STAGES = ("core", "ingest", "registration", "annotation", "tiling", "model", "qc", "synth")
EDGE_ONLY = {"load_config", "load_categories", "load_synthetic", "overrides_dir"}
ORCHESTRATION = ("dagster", "dagster_dbt", "dagster_k8s", "assets", "resources", "sthelar_cli", "sthelar_definitions")


def _library_modules() -> list[Path]:
    return sorted(LIBRARY.rglob("*.py"))


def _imported_roots(tree: ast.AST) -> set[str]:
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", _library_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_library_module_has_no_orchestration_import(path):
    bad = _imported_roots(ast.parse(path.read_text())) & set(ORCHESTRATION)
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: the library must not know the orchestration"


@pytest.mark.parametrize("path", [p for p in _library_modules() if not p.is_relative_to(LIBRARY / "core" / "config")],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_library_module_reads_no_config(path):
    tree = ast.parse(path.read_text())
    called = {getattr(n.func, "id", None) or getattr(n.func, "attr", None) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    used = called | imported
    assert not used & EDGE_ONLY, (f"{path.relative_to(ROOT)} uses {sorted(used & EDGE_ONLY)}: "
                                  "take the config section as an argument instead")


def test_library_top_level_is_small():
    top = sorted(p.name for p in LIBRARY.glob("*.py"))
    assert len(top) <= 8, top
    assert {p.name for p in LIBRARY.iterdir() if p.is_dir() and (p / "__init__.py").exists()} >= set(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_stage_public_api_resolves(stage):
    package = importlib.import_module(f"sthelar_platform.{stage}")
    assert package.__all__, f"sthelar_platform.{stage} lists no public names"
    for name in package.__all__:
        assert getattr(package, name) is not None
    with pytest.raises(AttributeError, match="no attribute"):
        package.no_such_name  # noqa: B018


@pytest.mark.parametrize("stage", [s for s in STAGES if s != "core"])
def test_stage_has_its_unit_tests(stage):
    assert list((ROOT / "tests" / "unit" / stage).glob("test_*.py")), f"tests/unit/{stage}/ has no tests"


@pytest.mark.parametrize("stage", ["ingest", "registration", "annotation", "tiling", "model", "qc"])
def test_stage_has_its_assets(stage):
    assert (ROOT / "assets" / f"{stage}.py").exists() or (ROOT / "assets" / stage / "__init__.py").exists()


HEAVY = ("torch", "scanpy", "anndata", "spatialdata", "spatialdata_io", "tangram", "great_expectations", "skimage",
         "singler")


def test_loading_the_definitions_imports_no_heavy_library():
    """The UI, the daemon and every run load the definitions: the stages' heavy libraries load in their steps."""
    import subprocess
    import sys

    code = ("import sys, sthelar_definitions; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip().splitlines()[-1:] in ([], [""]), f"imported at definition load: {out.stdout.strip()}"
