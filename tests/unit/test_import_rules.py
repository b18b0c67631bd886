"""ARCHITECTURE.md's import rules, checked on the parsed imports (ast) of every project module.

Every `import` counts, at module level or inside a function (a local import is still a
dependency). The rules:

1. Layers: schemas < features < pipelines = jobs < orchestration. A module imports only its own
   layer or lower ones. benchmarks may import any package but tests; only tests import tests.
2. No import cycles between modules (an import of `a.b.c` is an edge to module `a.b.c` only,
   not to the packages `a` and `a.b` Python initialises on the way).
3. Outside `features/store/`, production code (schemas, features, pipelines, jobs,
   orchestration) imports the store through the package `features.store` (its `__init__`
   exports) only, never a submodule such as `features.store.view`. Exempt: the README's
   `python -m` aliases (`features/query.py`, `features/verify.py`, `features/convert.py`),
   tests and benchmarks (they exercise and measure internals on purpose).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "features", "pipelines", "jobs", "orchestration", "benchmarks", "tests")
LAYERS = {
    "schemas": 0,
    "features": 1,
    "pipelines": 2,
    "jobs": 2,
    "orchestration": 3,
    "benchmarks": 4,
    "tests": 5,
}
STORE = "features.store"
STORE_ALIASES = frozenset(
    {"features.query", "features.verify", "features.convert", "features.compact"}
)
INTERNALS_EXEMPT_PACKAGES = frozenset({"benchmarks", "tests"})


@dataclass(frozen=True)
class Import:
    """One resolved import of a project module."""

    source: str  # importing module
    target: str  # imported module (the deepest name that is a module or package)
    line: int
    path: str  # importing file, relative to the repository root

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_files() -> list[Path]:
    return sorted(
        path
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "__pycache__" not in path.parts
    )


MODULES = {module_name(path): path for path in project_files()}


def resolve(name: str) -> str | None:
    """The deepest prefix of a dotted name that is a project module, or None (not ours)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return None


def _absolute(node: ast.ImportFrom, source: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = source.split(".") if is_package else source.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(path: Path) -> Iterator[Import]:
    """Every project import in a file, top-level and function-local alike."""
    source, relative = module_name(path), str(path.relative_to(ROOT))
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, source, path.name == "__init__.py")
            # `from a.b import c` imports module a.b.c when c is one, else a name of a.b.
            names = [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"] or [base]
        for name in names:
            target = resolve(name)
            if target is not None and target != source:
                yield Import(source, target, node.lineno, relative)


ALL_IMPORTS = [found for path in MODULES.values() for found in imports_of(path)]


def top(module: str) -> str:
    return module.split(".")[0]


def test_the_parser_sees_local_and_relative_imports() -> None:
    """The checker itself: a function-local import is found and resolved to the module."""
    found = {(i.source, i.target) for i in ALL_IMPORTS}
    assert ("orchestration.extract_entry", "pipelines.extract") in found  # local import
    assert ("features.query", "features.store.query") in found
    assert len(MODULES) > 80


def test_layers_import_downward_only() -> None:
    bad = [  # dict.fromkeys: one line per import statement, in file order
        f"{i.where()}: {i.source} (layer {top(i.source)}) imports {i.target} "
        f"(layer {top(i.target)})"
        for i in ALL_IMPORTS
        if (top(i.target) == "tests" and top(i.source) != "tests")
        or LAYERS[top(i.target)] > LAYERS[top(i.source)]
    ]
    bad = list(dict.fromkeys(bad))
    assert not bad, (
        "upward imports (allowed: schemas < features < pipelines = jobs < orchestration; "
        "benchmarks import anything but tests; only tests import tests):\n  " + "\n  ".join(bad)
    )


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for child in sorted(graph.get(node, ())):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    where: dict[tuple[str, str], list[str]] = {}
    for i in ALL_IMPORTS:
        graph[i.source].add(i.target)
        where.setdefault((i.source, i.target), []).append(i.where())
    report = []
    for component in import_cycles(graph):
        members = set(component)
        edges = [
            f"    {a} -> {b}  ({', '.join(dict.fromkeys(where[(a, b)]))})"
            for a in component
            for b in sorted(graph[a] & members)
        ]
        report.append(f"  cycle among {component}:\n" + "\n".join(edges))
    assert not report, (
        "import cycles (top-level and function-local imports both count; break each by moving "
        "the shared code to a module both import):\n" + "\n".join(report)
    )


def test_store_internals_stay_inside_the_store() -> None:
    bad = [
        f"{i.where()}: {i.source} imports {i.target}; import it from `features.store` "
        "(add the name to features/store/__init__.py's exports if missing)"
        for i in ALL_IMPORTS
        if i.target.startswith(STORE + ".")
        and not i.source.startswith(STORE + ".")
        and i.source != STORE
        and i.source not in STORE_ALIASES
        and top(i.source) not in INTERNALS_EXEMPT_PACKAGES
    ]
    bad = list(dict.fromkeys(bad))
    assert not bad, "store internals imported outside features/store/:\n  " + "\n  ".join(bad)


def test_the_checker_finds_planted_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"], ["d", "e"]]
    assert import_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
