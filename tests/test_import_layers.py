"""The package's imports run one way (issue 13, item 2).

Every module of ``mcdrop/`` is parsed with :mod:`ast` (nothing is imported), and its imports of other
mcdrop modules are split into *module-level* imports, run when the module is first imported, and *lazy*
ones, written inside a function or method and run only when it is called.

The rules:

1. **No cycle among module-level imports**, anywhere in ``mcdrop/``.
2. **What is allowed lazily.** A lazy import may point to any module the importer could also import at
   module level without closing a cycle: it is lazy only to keep ``import mcdrop`` light (TensorFlow,
   tensorflow-probability, matplotlib, Ray and the engine load on first use) or to resolve the package's
   lazy attributes (``from mcdrop import x``). A lazy import that *closes* a cycle (two modules that need
   each other, one hiding its half inside a function, as ``accumulators`` and ``predictive`` once did) is
   refused, except the edges listed in :data:`ALLOWED_LAZY_CYCLE_EDGES`, each with its reason.

The bottom layer, :mod:`mcdrop._stats`, imports nothing of mcdrop, lazily or not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mcdrop"


#: Lazy imports allowed to close a cycle, with the reason. Keep this short; each entry is debt.
ALLOWED_LAZY_CYCLE_EDGES: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (``from . import x`` included)."""
    if node.level == 0:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(module: str, node: ast.stmt) -> set[str]:
    """The mcdrop modules an import statement loads (``from pkg import submodule`` names the submodule)."""
    found = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            found.add(alias.name)
    elif isinstance(node, ast.ImportFrom):
        source = _resolve(module, node)
        found.add(source)
        for alias in node.names:
            if f"{source}.{alias.name}" in MODULES:
                found.add(f"{source}.{alias.name}")
    return {name for name in found if name in MODULES and name != module}


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(module-level, lazy) mcdrop imports of ``module``. Module level means outside any function body,
    including imports under ``if``/``try`` at the top; ``if TYPE_CHECKING:`` blocks never run and are skipped."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    eager, lazy = set(), set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (lazy if in_function else eager).update(_targets(module, child))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return eager, lazy - eager


def _parents(module: str) -> set[str]:
    """Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))} & MODULES.keys()


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module in MODULES:
        eager, _ = _imports(module)
        graph[module] = {t for target in eager for t in {target} | _parents(target)} - {module}
        graph[module] -= _parents(module)  # a package's __init__ is already running when its module loads
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_the_parser_sees_module_level_and_lazy_imports_apart():
    eager, lazy = _imports("mcdrop.predictive")
    assert "mcdrop._validation" in eager
    assert "mcdrop._distributions" in lazy and "mcdrop._distributions" not in eager
    assert _resolve("mcdrop.engine.sampler", ast.parse("from . import noise").body[0]) == "mcdrop.engine"
    assert _targets("mcdrop.engine.sampler", ast.parse("from . import noise").body[0]) == {
        "mcdrop.engine", "mcdrop.engine.noise"}


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_module_level_imports():
    cycles = _cycles(_graph())
    assert not cycles, f"module-level import cycles in mcdrop/: {cycles}"


def test_no_lazy_import_closes_a_cycle_except_the_allowed():
    graph = _graph()
    for module in MODULES:
        _, lazy = _imports(module)
        graph[module] |= {target for target in lazy if (module, target) not in ALLOWED_LAZY_CYCLE_EDGES}
        graph[module] -= _parents(module) | {"mcdrop"}  # the package's lazy attribute table imports nothing
    cycles = _cycles(graph)
    assert not cycles, f"import cycles in mcdrop/ closed by a lazy import: {cycles}"


def test_the_allowed_lazy_edges_still_exist():
    for module, target in ALLOWED_LAZY_CYCLE_EDGES:
        assert target in _imports(module)[1], f"{module} no longer imports {target} lazily: drop the entry"


@pytest.mark.parametrize("module", ["mcdrop._stats"])
def test_the_bottom_layer_imports_nothing_of_mcdrop(module):
    eager, lazy = _imports(module)
    assert not eager and not lazy, f"{module} imports {sorted(eager | lazy)}"


def test_accumulators_never_import_the_predictions_which_build_on_them():
    eager, lazy = _imports("mcdrop.accumulators")
    assert "mcdrop.predictive" not in eager | lazy
    assert {"mcdrop.accumulators", "mcdrop._stats"} <= _imports("mcdrop.predictive")[0]


def test_acquisition_reads_statistics_from_the_bottom_layer_not_from_accumulators():
    eager, lazy = _imports("mcdrop.acquisition")
    assert "mcdrop._stats" in eager
    assert "mcdrop.accumulators" not in eager | lazy
