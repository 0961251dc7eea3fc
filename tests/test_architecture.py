"""The package's import graph, read with ast: no circles (type-only imports included), the
layers of docs/architecture.md respected, and every module small enough to read at once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "melissa_nb"
LARGE_BY_DESIGN = {"melissa_nb.protocol"}  # one table of message layouts (its docstring says)
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_in(source: str, package: str) -> set[str]:
    """Every module name `source` imports anywhere in its text (inside functions and under
    `if TYPE_CHECKING:` too); `package` resolves relative imports."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def imported_modules(name: str) -> set[str]:
    """The package's modules that module `name` imports."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = imports_in(path.read_text(), package)
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: imported_modules(name) for name in MODULES}


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` as the list of modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                circle = visit(target)
                if circle:
                    return circle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            circle = visit(module)
            if circle:
                return circle
    return None


def test_the_circle_finder_finds_a_type_only_circle() -> None:
    """The check itself: a circle closed by an import under TYPE_CHECKING is one."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_circle(graph) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from melissa_nb.server.receive.ingest import Ingest\n"
        "def later():\n"
        "    from . import plots\n"
    )
    found = imports_in(source, "melissa_nb.results")
    assert {"melissa_nb.server.receive.ingest", "melissa_nb.results.plots"} <= found


def test_no_import_circles() -> None:
    circle = find_circle(GRAPH)
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def imports_of(prefix: str) -> dict[str, set[str]]:
    return {name: GRAPH[name] for name in GRAPH if name == prefix or name.startswith(prefix + ".")}


@pytest.mark.parametrize(
    ("layer", "may_not_import"),
    [
        # Pure math: nothing of sockets, files, MPI, the server or the runner.
        (
            "melissa_nb.kernels",
            ("melissa_nb.server", "melissa_nb.study", "melissa_nb.protocol", "melissa_nb.netcdf"),
        ),
        ("melissa_nb.protocol", ("melissa_nb.kernels", "melissa_nb.server", "melissa_nb.study")),
        (
            "melissa_nb.server.receive",
            (
                "melissa_nb.server.launcher",
                "melissa_nb.server.checkpoint",
                "melissa_nb.server.results",
                "melissa_nb.server.loop",
                "melissa_nb.server.startup",
            ),
        ),
        ("melissa_nb.server.live", ("melissa_nb.server", "melissa_nb.kernels")),
        ("melissa_nb.server.launcher", ("melissa_nb.kernels", "melissa_nb.server.receive")),
        ("melissa_nb.server.results", ("melissa_nb.server.receive", "melissa_nb.server.loop")),
        ("melissa_nb.server.checkpoint", ("melissa_nb.server.loop", "melissa_nb.server.startup")),
        ("melissa_nb.results", ("melissa_nb.server", "melissa_nb.study")),
    ],
)
def test_layers(layer: str, may_not_import: tuple[str, ...]) -> None:
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in imports_of(layer).items()
        for target in targets
        if any(target == banned or target.startswith(banned + ".") for banned in may_not_import)
        and not target.startswith(layer + ".")
    )
    assert not wrong, "\n".join(wrong)


def test_kernels_need_only_numpy_and_numba() -> None:
    """melissa_nb.kernels is usable on its own: outside imports are numpy, numba and the
    standard library (the package's own error types aside)."""
    outside = set()
    for name in imports_of("melissa_nb.kernels"):
        for node in ast.walk(ast.parse(MODULES[name].read_text())):
            if isinstance(node, ast.Import):
                outside.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level:
                outside.add((node.module or "").split(".")[0])
    assert outside - {"numpy", "numba", "melissa_nb", "__future__"} <= {
        "math",
        "numbers",
        "collections",
        "os",
        "typing",
        "dataclasses",
        "itertools",
    }


def test_every_module_reads_at_once() -> None:
    long = {
        name: lines
        for name, path in MODULES.items()
        if (lines := len(path.read_text().splitlines())) > MAX_LINES and name not in LARGE_BY_DESIGN
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_subpackage_says_what_it_owns() -> None:
    """Each folder's __init__ opens with a docstring (what it owns, what it may import)."""
    missing = [
        name
        for name, path in MODULES.items()
        if path.name == "__init__.py"
        and len(ast.get_docstring(ast.parse(path.read_text())) or "") < 60
    ]
    assert not missing, missing
