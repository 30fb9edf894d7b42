"""Folders by role, and no import cycle between any two production modules (function-level imports count:
a cycle hidden inside a function is still one module needing the other)."""

from __future__ import annotations

import ast
from pathlib import Path

from devtools.process import REPO

#: Each production folder and what it holds (README's architecture section says the same).
PACKAGES = ("catalog", "indexstore", "ranking", "search", "safeio", "handlers", "modelio", "modelserver",
            "modelarchive", "devtools", "gateway", "evaluation", "localfeatures")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The production modules ``path`` imports, anywhere in it (``from pkg import module`` counts as the module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in known else node.module)
    return {m for m in out if m in known}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_module_imports_itself_round_a_cycle():
    known = modules()
    graph = {name: imports_of(path, known) - {name} for name, path in known.items()}
    graph = {name: {m for m in deps if not name.startswith(m + ".")} for name, deps in graph.items()}  # own package
    assert cycle(graph) is None


def test_the_cycle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_each_folder_holds_its_role_only():
    """The model archive's code imports nothing of the gateway, the catalog, storage or ranking; the search
    seam and the ranking import nothing of the HTTP layer."""
    known = modules()
    for name, path in known.items():
        deps = {d.split(".")[0] for d in imports_of(path, known)}
        if name.startswith(("handlers", "modelio")):
            assert deps <= {"handlers", "modelio"}, name
        if name.startswith("localfeatures"):  # image → keypoints, pure: used by the build and the gateway
            assert not deps - {"localfeatures"}, name
        if name.startswith(("ranking", "search", "indexstore", "safeio", "catalog", "localfeatures")):
            assert "gateway" not in deps and "evaluation" not in deps, name
        if not name.startswith("evaluation"):
            assert "evaluation" not in deps, name
