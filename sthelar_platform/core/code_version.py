"""Code versions from the import graph: an asset is out of date when any library module it can reach changes.

A hand-kept list of modules per asset went stale whenever a stage grew a private helper module, so the
platform kept outputs computed by old code. Here the graph is read from the source (``ast``, nothing is
imported): every ``import`` and ``from ... import`` anywhere in a module (function-level ones included),
relative imports, the parent packages a submodule import executes, and the names a stage package
re-exports lazily (its ``_EXPORTS`` table, see ``core/_lazy.py``). The graph of one source tree is
parsed once per process.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sthelar_platform.core.hashing import sha256_text

LIBRARY_PACKAGE = "sthelar_platform"
LIBRARY_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds the sthelar_platform package


@dataclass(frozen=True)
class ModuleGraph:
    """The import graph of one package below ``root`` (a source checkout, or a scratch copy in a test)."""

    root: Path
    package: str = LIBRARY_PACKAGE
    _imports: dict[str, frozenset[str]] = field(default_factory=dict, init=False, repr=False, compare=False)

    @functools.cached_property
    def files(self) -> dict[str, Path]:
        """Module name -> source file, for every module of the package (packages by their ``__init__``)."""
        base = self.root / self.package
        out = {}
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(self.root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
        return out

    def _is_package(self, name: str) -> bool:
        return self.files[name].name == "__init__.py"

    @functools.cached_property
    def _lazy_exports(self) -> dict[str, dict[str, str]]:
        """Package -> {public name: submodule} from the ``_EXPORTS`` literal of its ``__init__``."""
        out: dict[str, dict[str, str]] = {}
        for name, path in self.files.items():
            if path.name != "__init__.py":
                continue
            for node in ast.parse(path.read_text(), str(path)).body:
                if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets)
                        and isinstance(node.value, ast.Dict)):
                    out[name] = {k.value: v.value for k, v in zip(node.value.keys, node.value.values, strict=True)
                                 if isinstance(k, ast.Constant) and isinstance(k.value, str)
                                 and isinstance(v, ast.Constant) and isinstance(v.value, str)}
        return out

    def _with_parents(self, name: str) -> set[str]:
        """A module and the packages above it: importing ``a.b.c`` runs ``a`` and ``a.b`` first."""
        parts = name.split(".")
        return {m for i in range(1, len(parts) + 1) if (m := ".".join(parts[:i])) in self.files}

    def _resolve(self, importer: str, node: ast.Import | ast.ImportFrom) -> set[str]:
        if isinstance(node, ast.Import):
            return {m for a in node.names for m in self._with_parents(a.name)}
        if node.level:  # relative: against the importer's package
            here = importer if self._is_package(importer) else importer.rpartition(".")[0]
            anchor = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
            base = f"{anchor}.{node.module}" if node.module else anchor
        else:
            base = node.module or ""
        found = self._with_parents(base)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in self.files:  # `from pkg import submodule`
                found |= self._with_parents(sub)
            elif alias.name in self._lazy_exports.get(base, {}):  # `from stage import public_name`, resolved lazily
                found |= self._with_parents(f"{base}.{self._lazy_exports[base][alias.name]}")
        return found

    def imports_of(self, name: str) -> frozenset[str]:
        """The package's modules that ``name`` imports directly (anywhere in its source)."""
        if name not in self._imports:
            tree = ast.parse(self.files[name].read_text(), str(self.files[name]))
            found: set[str] = set()
            for node in _run_time_imports(tree):
                found |= self._resolve(name, node)
            self._imports[name] = frozenset(found - {name})
        return self._imports[name]

    def closure(self, entries: Iterable[str]) -> frozenset[str]:
        """Every module of the package reachable from ``entries`` (themselves and their parents included)."""
        todo = [m for e in entries for m in self._with_parents(self._known(e))]
        seen: set[str] = set()
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(self.imports_of(name) - seen)
        return frozenset(seen)

    def _known(self, name: str) -> str:
        if name not in self.files:
            raise KeyError(f"{name!r} is not a module of {self.package} under {self.root}")
        return name

    def source_hash(self, entries: Iterable[str]) -> str:
        """One hash of the source text of every module reachable from ``entries``."""
        names = sorted(self.closure(entries))
        return sha256_text("\n".join(f"# {n}\n{self.files[n].read_text()}" for n in names))


def _run_time_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: those under ``if TYPE_CHECKING:`` only inform a type checker."""
    out: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            out.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


@functools.cache
def library_graph(root: Path = LIBRARY_ROOT) -> ModuleGraph:
    """The installed library's graph, parsed once per process."""
    return ModuleGraph(root)


def code_version(entries: Iterable[str], config_hashes: Iterable[str] = (), graph: ModuleGraph | None = None) -> str:
    """12 hex digits over the library modules reachable from ``entries`` and the given config file hashes."""
    g = graph or library_graph()
    return sha256_text("\n".join([g.source_hash(entries), *config_hashes]))[:12]
