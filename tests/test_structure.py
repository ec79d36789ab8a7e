"""The shape of adaptix's own imports, read from its source with `ast` (nothing is imported).

**The graph.** One node per module of ``adaptix/`` (a package is its ``__init__``). An import is
an edge to the module it names: ``from adaptix.x import y`` to ``adaptix.x.y`` where ``y`` is a
submodule, else to ``adaptix.x``; relative imports are resolved. Importing ``adaptix.a.b`` first
runs ``adaptix/a/__init__.py``, so it is an edge to ``adaptix.a`` too, unless the importer lies
inside ``adaptix.a`` (which is then being imported already). The root package is the exception:
every module lies under it, so ``adaptix`` is a target only where it is named (``import
adaptix``, ``from adaptix import Trace``).

**Kinds of edge.** An import under ``if TYPE_CHECKING:`` is annotation-only: it never runs and
is left out. One inside a function body is *deferred*: it runs later, but it runs, so it is an
edge of the runtime graph like a top-level one.

**The rules** (``/work/shared/STYLE.md``: Layout):

- No circle in the runtime graph. A circle closed by a deferred import is reported as such: the
  deferral only hides it. Circles of annotation-only imports are allowed.
- No private name crosses modules: ``from adaptix.m import _name`` (or ``m._name`` on an imported
  adaptix module) is refused; if another module needs it, it is public somewhere. Dunder names
  (``__version__``) are not private names. A module whose own name has a leading underscore
  (``adaptix._version``, ``adaptix._frozen``) is private to the package: any adaptix module may
  import it, code outside adaptix may not (``tests/test_public_imports.py``).
- At most `MAX_FLOORS` import floors: the longest chain of modules in the runtime graph.
- Imports go down the layers (`LAYERS`): a module imports at runtime only modules of its own
  layer or lower ones. Every module has a layer, so a new one is placed deliberately.
"""

from __future__ import annotations

import ast
import itertools
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FLOORS = 12

#: Bottom to top. A module belongs to the first layer that holds it or a package above it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "ground",
        (
            "adaptix._version",
            "adaptix._frozen",
            "adaptix.errors",
            "adaptix.scalars",
            "adaptix.settings",
            "adaptix.callsite",
        ),
    ),
    ("core", ("adaptix.core",)),
    ("kernels", ("adaptix.kernels",)),
    ("plugin contract", ("adaptix.components", "adaptix.hookspecs", "adaptix.plugins")),
    ("offline", ("adaptix.offline",)),
    ("online", ("adaptix.online",)),
    (
        "public API and integrations",
        (
            "adaptix",
            "adaptix.distributed",
            "adaptix.tracking",
            "adaptix.testing",
            "adaptix.default_plugins",
        ),
    ),
    ("experiment and command line", ("adaptix.experiment", "adaptix.cli")),
]


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` (a module), at ``line``, as ``kind``."""

    source: str
    target: str
    kind: str  # "top", "deferred" or "annotation"
    line: int


@dataclass(frozen=True)
class PrivateUse:
    """``source`` takes the private ``name`` of module ``target`` at ``line``."""

    source: str
    target: str
    name: str
    line: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line} takes {self.target}.{self.name}"


def modules_of(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file of every module of ``package`` (under ``root``)."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


class _Reader(ast.NodeVisitor):
    """The imports of one module, with their kind, and its uses of private names."""

    def __init__(self, name: str, is_package: bool, modules: dict[str, Path], package: str):
        self.name = name
        self.here = name if is_package else name.rpartition(".")[0]
        self.modules = modules
        self.package = package
        self.kind = "top"
        self.edges: list[Edge] = []
        self.private: list[PrivateUse] = []
        self.module_aliases: dict[str, str] = {}  # local name -> adaptix module

    def _add(self, target: str, line: int) -> None:
        parts = target.split(".")
        for i in range(2, len(parts)):  # the subpackages that importing ``target`` runs first
            parent = ".".join(parts[:i])
            if not (self.name == parent or self.name.startswith(parent + ".")):
                self.edges.append(Edge(self.name, parent, self.kind, line))
        self.edges.append(Edge(self.name, target, self.kind, line))

    def _ours(self, dotted: str) -> bool:
        return dotted == self.package or dotted.startswith(self.package + ".")

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        outer, self.kind = self.kind, "annotation"
        for statement in node.body:
            self.visit(statement)
        self.kind = outer
        for statement in node.orelse:
            self.visit(statement)

    def _visit_function(self, node: ast.AST) -> None:
        outer = self.kind
        if outer == "top":
            self.kind = "deferred"
        self.generic_visit(node)
        self.kind = outer

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _visit_function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if not self._ours(alias.name) or alias.name not in self.modules:
                continue
            self._add(alias.name, node.lineno)
            if alias.asname:
                self.module_aliases[alias.asname] = alias.name
            elif alias.name == self.package:
                self.module_aliases[self.package] = self.package

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.here.split(".")[: len(self.here.split(".")) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        if not self._ours(module):
            return
        for alias in node.names:
            submodule = f"{module}.{alias.name}"
            if submodule in self.modules:
                self._add(submodule, node.lineno)
                self.module_aliases[alias.asname or alias.name] = submodule
                continue
            self._add(module, node.lineno)
            if _is_private(alias.name):
                self.private.append(PrivateUse(self.name, module, alias.name, node.lineno))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name) and _is_private(node.attr):
            target = self.module_aliases.get(node.value.id)
            if target is not None and target != self.name:
                self.private.append(PrivateUse(self.name, target, node.attr, node.lineno))
        self.generic_visit(node)


@dataclass
class ImportGraph:
    """What `read_graph` found in a package."""

    modules: list[str]
    edges: list[Edge]
    private: list[PrivateUse]

    def runtime(self) -> dict[str, set[str]]:
        """Module -> the modules it imports when it runs (top-level and deferred edges)."""
        graph: dict[str, set[str]] = {m: set() for m in self.modules}
        for edge in self.edges:
            if edge.kind != "annotation" and edge.target != edge.source:
                graph[edge.source].add(edge.target)
        return graph

    def edge(self, source: str, target: str) -> Edge:
        """The runtime edge source -> target (a deferred one only when no top-level one)."""
        found = [e for e in self.edges if (e.source, e.target) == (source, target)]
        found.sort(key=lambda e: {"top": 0, "deferred": 1, "annotation": 2}[e.kind])
        return found[0]


def read_graph(root: Path, package: str) -> ImportGraph:
    """The import graph of ``package`` (a folder under ``root``), from its source."""
    modules = modules_of(root, package)
    edges: list[Edge] = []
    private: list[PrivateUse] = []
    for name, path in modules.items():
        reader = _Reader(name, path.name == "__init__.py", modules, package)
        reader.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        edges += reader.edges
        private += reader.private
    return ImportGraph(list(modules), edges, private)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of ``graph``, or None when it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def describe_cycle(graph: ImportGraph, cycle: list[str]) -> str:
    """The cycle, one edge a line, deferred edges marked (the imports that hide it)."""
    lines = []
    for source, target in itertools.pairwise(cycle):
        edge = graph.edge(source, target)
        hides = "  <- deferred import: it hides the circle" if edge.kind == "deferred" else ""
        lines.append(f"  {source}:{edge.line} imports {target}{hides}")
    return "\n".join(lines)


def longest_chain(graph: dict[str, set[str]]) -> list[str]:
    """The longest chain of imports in the acyclic ``graph``, importer first.

    Raises:
        ValueError: ``graph`` has a cycle (a chain through it would be endless).
    """
    best: dict[str, list[str]] = {}
    open_: set[str] = set()

    def chain(node: str) -> list[str]:
        if node in open_:
            raise ValueError(f"no longest chain: {node} lies on an import circle")
        if node not in best:
            open_.add(node)
            below = [chain(nxt) for nxt in sorted(graph[node])]
            open_.discard(node)
            best[node] = [node, *max(below, key=len, default=[])]
        return best[node]

    return max((chain(node) for node in sorted(graph)), key=len)


def layer_of(module: str) -> int | None:
    """The index in `LAYERS` of ``module``'s layer (None: it has none)."""
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes if p != "adaptix"):
            return index
        if module == "adaptix" and "adaptix" in prefixes:
            return index
    return None


@pytest.fixture(scope="module")
def adaptix_graph() -> ImportGraph:
    return read_graph(ROOT, "adaptix")


def test_the_graph_reads_adaptix(adaptix_graph: ImportGraph) -> None:
    runtime = adaptix_graph.runtime()
    assert len(adaptix_graph.modules) > 60
    assert "adaptix.offline.policy" in runtime["adaptix.offline.simulate"]
    # ``from adaptix.kernels.types import ...`` runs adaptix/kernels/__init__.py first.
    assert "adaptix.kernels" in runtime["adaptix.online.runtime"]


def test_no_import_circle_at_runtime(adaptix_graph: ImportGraph) -> None:
    cycle = find_cycle(adaptix_graph.runtime())
    assert cycle is None, "an import circle at runtime:\n" + describe_cycle(adaptix_graph, cycle)


def test_no_private_name_crosses_modules(adaptix_graph: ImportGraph) -> None:
    assert [str(use) for use in adaptix_graph.private] == []


def test_import_floors(adaptix_graph: ImportGraph) -> None:
    runtime = adaptix_graph.runtime()
    assert find_cycle(runtime) is None, "no floors while an import circle stands (see above)"
    chain = longest_chain(runtime)
    print(f"import floors: {len(chain)} ({' -> '.join(chain)})")
    assert len(chain) <= MAX_FLOORS, f"{len(chain)} import floors: {' -> '.join(chain)}"


def test_every_module_has_a_layer(adaptix_graph: ImportGraph) -> None:
    assert [m for m in adaptix_graph.modules if layer_of(m) is None] == []


def test_imports_go_down_the_layers(adaptix_graph: ImportGraph) -> None:
    upward = []
    for edge in adaptix_graph.edges:
        source, target = layer_of(edge.source), layer_of(edge.target)
        if edge.kind == "annotation" or source is None or target is None or target <= source:
            continue
        upward.append(
            f"{edge.source}:{edge.line} ({LAYERS[source][0]}) imports {edge.target} "
            f"({LAYERS[target][0]})"
        )
    assert upward == []


# --------------------------------------------------- the checker finds what it must (can fail)


def _package(tmp_path: Path, files: dict[str, str]) -> ImportGraph:
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return read_graph(tmp_path, "pkg")


def test_a_circle_hidden_by_a_deferred_import_is_found(tmp_path: Path) -> None:
    graph = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg.b import helper\n",
            "b.py": """
                def helper():
                    from pkg.a import thing  # deferred: hides the circle
                    return thing
                """,
        },
    )
    cycle = find_cycle(graph.runtime())
    assert cycle is not None
    assert set(cycle) == {"pkg.a", "pkg.b"}
    report = describe_cycle(graph, cycle)
    assert "pkg.b:3 imports pkg.a  <- deferred import: it hides the circle" in report


def test_an_annotation_only_circle_is_allowed(tmp_path: Path) -> None:
    graph = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg.b import B\n",
            "b.py": """
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    from pkg.a import A
                else:
                    import json
                """,
        },
    )
    assert find_cycle(graph.runtime()) is None
    assert [e.kind for e in graph.edges if e.source == "pkg.b"] == ["annotation"]


def test_a_circle_through_a_subpackage_init_is_found(tmp_path: Path) -> None:
    graph = _package(
        tmp_path,
        {
            "__init__.py": "",
            "sub/__init__.py": "from pkg.sub.x import X\nfrom pkg.top import T\n",
            "sub/x.py": "X = 1\n",
            "top.py": "T = 1\n",
            "low.py": "from pkg.sub.x import X\n",  # runs pkg/sub/__init__.py first
        },
    )
    assert graph.runtime()["pkg.low"] == {"pkg.sub", "pkg.sub.x"}
    cyclic = _package(
        tmp_path / "cyclic",
        {
            "__init__.py": "",
            "sub/__init__.py": "from pkg import top\n",
            "sub/x.py": "",
            "top.py": "from pkg.sub.x import X\n",
        },
    )
    assert find_cycle(cyclic.runtime()) == ["pkg.sub", "pkg.top", "pkg.sub"]


def test_private_names_taken_from_another_module_are_found(tmp_path: Path) -> None:
    graph = _package(
        tmp_path,
        {
            "__init__.py": "from pkg._version import __version__\n",
            "_version.py": "__version__ = '1'\n",
            "a.py": "def _helper(): ...\n_CONSTANT = 1\n",
            "b.py": """
                from pkg.a import _CONSTANT, _helper
                from pkg import a
                from . import a as same
                def f():
                    return a._helper(), same._CONSTANT, a.__name__
                """,
        },
    )
    assert sorted(str(use) for use in graph.private) == [
        "pkg.b:2 takes pkg.a._CONSTANT",
        "pkg.b:2 takes pkg.a._helper",
        "pkg.b:6 takes pkg.a._CONSTANT",
        "pkg.b:6 takes pkg.a._helper",
    ]


def test_floors_count_the_modules_of_the_longest_chain(tmp_path: Path) -> None:
    graph = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "import pkg.b\nimport pkg.d\n",
            "b.py": "from pkg import c\n",
            "c.py": "",
            "d.py": "",
        },
    )
    assert longest_chain(graph.runtime()) == ["pkg.a", "pkg.b", "pkg.c"]
    with pytest.raises(ValueError, match="import circle"):
        longest_chain({"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}})
