"""The module layout holds: no import cycle among lfr's modules, and lfr.api is a leaf.

The import graph is read from the source with the AST, so an import inside a function counts like
one at the top (it runs too, only later), and so does ``importlib.import_module("lfr.x")`` with a
literal name. Imports under ``if TYPE_CHECKING:`` never run, and a package's ``__init__`` importing
its own submodules is how a package presents them: neither counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lfr

PACKAGE_DIR = Path(lfr.__file__).parent
LEAVES_API_MAY_IMPORT = {"lfr.api", "lfr.messages"}


def module_name(path: Path) -> str:
    parts = ("lfr", *path.relative_to(PACKAGE_DIR).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Dotted names a module imports at run time, anywhere in its body."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:  # the else branch does run
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from lfr.x import y` runs lfr.x, and lfr.x.y where that is a module (`from lfr
            # import builtin`): names that are no module are dropped by the caller.
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and _is_import_module(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.add(first.value)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _is_import_module(func: ast.expr) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id == "import_module")


def import_graph() -> dict[str, set[str]]:
    """lfr module -> the lfr modules it imports (a package's own submodules left out)."""
    modules = all_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        targets = {t for t in _imported_names(tree, name, is_package) if t in modules}
        if is_package:
            targets = {t for t in targets if not t.startswith(name + ".")}
        graph[name] = targets - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path = [root]
        stack = [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            step = next(stack[-1], None)
            if step is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(step) == 1:
                return [*path[path.index(step):], step]
            elif step not in state:
                state[step] = 1
                path.append(step)
                stack.append(iter(sorted(graph.get(step, ()))))
    return None


def test_the_graph_sees_what_runs() -> None:
    """Guards the reader itself: the kinds of import it must count, and those it must not."""
    graph = import_graph()
    assert "lfr.messages" in graph["lfr.api"]
    assert "lfr.runtime.actor" in graph["lfr.pipeline.camera"]
    assert "lfr.builtin" in graph["lfr.plugins"]  # imported inside a function
    assert not any(t.startswith("lfr.runtime.") for t in graph["lfr.runtime"])
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import lfr.a\n"
                     "def f():\n    from . import b\n    importlib.import_module('lfr.c')\n")
    assert _imported_names(tree, "lfr.x", is_package=False) >= {"lfr.b", "lfr.c"}
    assert "lfr.a" not in _imported_names(tree, "lfr.x", is_package=False)
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_lfr_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_api_imports_only_leaves() -> None:
    graph = import_graph()
    assert graph["lfr.api"] <= LEAVES_API_MAY_IMPORT, graph["lfr.api"]
    for leaf in graph["lfr.api"]:
        assert graph[leaf] <= LEAVES_API_MAY_IMPORT, f"{leaf} is not a leaf: {graph[leaf]}"
