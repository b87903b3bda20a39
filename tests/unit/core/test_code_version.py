"""Code versions from the import graph: an edit to any library module an asset reaches changes exactly the
versions of the assets that reach it, and every library module an asset's code uses is one it reaches."""

import ast
import shutil
from pathlib import Path

import pytest

import sthelar_definitions
from assets._runtime import CODE_VERSION_INPUTS
from sthelar_platform.core.code_version import LIBRARY_ROOT, ModuleGraph, code_version
from sthelar_platform.core.config import config_version

ROOT = Path(__file__).resolve().parents[3]


def _package(root: Path, files: dict[str, str]) -> ModuleGraph:
    for rel, text in files.items():
        path = root / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return ModuleGraph(root, "pkg")


def test_the_graph_follows_every_kind_of_import_and_only_those(tmp_path):
    g = _package(tmp_path, {
        "__init__.py": "",
        "a/__init__.py": "from pkg.core._lazy import x\n_EXPORTS = {'public': 'hidden'}\n",
        "a/hidden.py": "VALUE = 1\n",
        "a/entry.py": "from . import sibling\nfrom .. import core\n\ndef f():\n    from pkg.b import late  # in a function\n",
        "a/sibling.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import typing_only\n",
        "b/__init__.py": "",
        "b/late.py": "import pkg.core.deep\n",
        "b/typing_only.py": "",
        "c.py": "from pkg.a import public\n",
        "core/__init__.py": "", "core/_lazy.py": "", "core/deep.py": "",
    })
    assert g.closure(["pkg.a.entry"]) == {
        "pkg", "pkg.a", "pkg.a.entry", "pkg.a.sibling", "pkg.core", "pkg.core._lazy", "pkg.b", "pkg.b.late",
        "pkg.core.deep"}  # the parents a submodule import runs, relative and function-level imports; no TYPE_CHECKING
    assert "pkg.a.hidden" in g.closure(["pkg.c"])  # a lazily re-exported name is its module
    with pytest.raises(KeyError, match="not a module"):
        g.closure(["pkg.nowhere"])


def _versions() -> dict[str, str]:
    graph = sthelar_definitions.defs.resolve_asset_graph()
    out = {k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()}
    return {k: v for k, v in out.items() if v in CODE_VERSION_INPUTS}  # the dbt models version themselves


def _recompute(root: Path, versions: dict[str, str]) -> dict[str, str]:
    graph = ModuleGraph(root)
    return {a: code_version(CODE_VERSION_INPUTS[v][0], [config_version(c) for c in CODE_VERSION_INPUTS[v][1]], graph)
            for a, v in versions.items()}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    root = tmp_path_factory.mktemp("library_copy")
    shutil.copytree(LIBRARY_ROOT / "sthelar_platform", root / "sthelar_platform",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return root


# what an edit to a private module must mark out of date, and nothing else (the issue that asked for this
# named the first three: each was missing from a hand-kept list)
EDITS = {
    "registration/_level0.py": {"he_registration"},
    "tiling/artefacts.py": {"segmentation_agreement", "model_evaluation"},  # evaluation scores patches with it
    "core/stain.py": {"reference_segmentation", "segmentation_agreement", "model_evaluation"},
    "synth/_render.py": set(),  # the generator: no asset runs it
}


@pytest.mark.parametrize("module", EDITS)
def test_editing_a_private_module_changes_exactly_the_assets_that_import_it(scratch, module):
    versions = _versions()
    assert _recompute(scratch, versions) == versions  # the copy reproduces the definitions' versions
    path = scratch / "sthelar_platform" / module
    original = path.read_text()
    path.write_text(original + "\n# an edit\n")
    try:
        after = _recompute(scratch, versions)
    finally:
        path.write_text(original)
    assert {a for a in versions if after[a] != versions[a]} == EDITS[module]


def test_a_config_section_is_part_of_the_version_of_the_assets_that_read_it(tmp_path, monkeypatch):
    import yaml

    from sthelar_platform.core.config import PACKAGED_CONFIG_DIR

    before = {s: config_version(s) for s in ("pipeline", "pipeline.he_image", "pipeline.automation")}
    cfg = yaml.safe_load((PACKAGED_CONFIG_DIR / "pipeline.yaml").read_text())
    cfg["automation"]["landing_interval_s"] = 45
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(cfg))  # comments gone, one automation value changed
    monkeypatch.setenv("STHELAR_CONFIG_DIR", str(tmp_path))
    after = {s: config_version(s) for s in before}
    assert after["pipeline.he_image"] == before["pipeline.he_image"]  # patches do not rebuild for a sensor setting
    assert after["pipeline"] != before["pipeline"] and after["pipeline.automation"] != before["pipeline.automation"]


# -- every library module an asset's code uses is in the closure its version hashes --------------------------

def _imports(tree: ast.Module, module: str) -> dict[str, str]:
    """Local name -> what it names (``pkg.mod`` or ``pkg.mod.attr``) for an asset-layer module."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(module.split(".")[:-node.level] + ([node.module] if node.module else []))
            for a in node.names:
                out[a.asname or a.name] = f"{base}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.asname and a.name or a.name.split(".")[0]
    return out


def _parse(module: str) -> tuple[ast.Module, dict[str, ast.AST], dict[str, str]]:
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = ROOT / module.replace(".", "/") / "__init__.py"
    tree = ast.parse(path.read_text())
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    defs |= {t.id: n for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    return tree, defs, _imports(tree, module)


# what an asset uses that never shapes its output: its config's loaders (the config values are hashed as
# configs=) and the slide id check
NOT_DATA = ("sthelar_platform.core.config", "sthelar_platform.core.ids")


def _names(node: ast.AST) -> set[str]:
    """Names a definition's code uses; decorators (an asset's ``deps=``) are not code it runs."""
    out, todo = set(), [node]
    while todo:
        n = todo.pop()
        if isinstance(n, ast.Name):
            out.add(n.id)
        children = [c for c in ast.iter_child_nodes(n)
                    if not (isinstance(n, ast.FunctionDef) and c in n.decorator_list)]
        todo.extend(children)
    return out


def _library_uses(module: str, name: str, graph: ModuleGraph, seen: set) -> set[str]:
    """The library modules that ``module.name`` (an asset-layer function) uses, following asset-layer helpers."""
    if (module, name) in seen or module == "assets._runtime":  # the runtime writes markers and lineage, not data
        return set()
    seen.add((module, name))
    _, defs, imports = _parse(module)
    used: set[str] = set()
    names = _names(defs[name]) if name in defs else set()
    for n in names:
        if n in defs and n != name:
            used |= _library_uses(module, n, graph, seen)
        target = imports.get(n, "")
        if target.startswith("sthelar_platform.") and not target.startswith(NOT_DATA):
            used.add(target if target in graph.files else target.rpartition(".")[0])
        elif target.startswith("assets."):
            owner, _, attr = target.rpartition(".")
            if (ROOT / (owner.replace(".", "/") + ".py")).exists() or (ROOT / owner.replace(".", "/")).is_dir():
                used |= _library_uses(owner, attr, graph, seen)
    return used


def config_dependent(asset: str) -> set[str]:
    """Library code an asset runs only when its config selects it (and whose version it then includes)."""
    from sthelar_platform.core.config import load_config

    cellvit = load_config("tiling").reference_segmentation.method == "cellvit"
    return {"sthelar_platform.model.cellvit.inference"} if asset == "reference_segmentation" and not cellvit else set()


def test_the_cellvit_reference_segmenter_puts_the_model_code_in_the_version(tmp_path, monkeypatch):
    import yaml

    from assets.tiling.reference_segmentation import _library_entries
    from sthelar_platform.core.config import PACKAGED_CONFIG_DIR

    assert _library_entries() == ("sthelar_platform.tiling.reference_segmentation",)
    cfg = yaml.safe_load((PACKAGED_CONFIG_DIR / "tiling.yaml").read_text())
    cfg["reference_segmentation"]["method"] = "cellvit"
    (tmp_path / "tiling.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("STHELAR_CONFIG_DIR", str(tmp_path))
    assert "sthelar_platform.model.cellvit.inference" in _library_entries()


def test_every_library_module_an_asset_uses_is_in_its_code_version():
    graph = ModuleGraph(LIBRARY_ROOT)
    checked = 0
    for assets_def in sthelar_definitions.defs.assets or []:
        version = next(iter(getattr(assets_def, "code_versions_by_key", {}).values()), None)
        if version not in CODE_VERSION_INPUTS:
            continue
        fn = assets_def.op.compute_fn.decorated_fn
        top = fn.__qualname__.split(".")[0]  # a factory's inner function: walk the whole factory
        used = _library_uses(fn.__module__, top, graph, set())
        missing = used - graph.closure(CODE_VERSION_INPUTS[version][0]) - config_dependent(assets_def.key.to_user_string())
        assert not missing, f"{assets_def.key.to_user_string()} uses {sorted(missing)} outside its code version"
        checked += 1
    assert checked >= 18
