"""The package's import graph, read with ast (nothing is imported): no cycles between modules,
and the layering docs/architecture.md states stays true.

Every import counts, also one inside a function or under TYPE_CHECKING: a lazy import still
couples two modules, and a cycle hidden in one only waits for someone to hoist it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

PACKAGE = "orderflow_ingest"
SOURCE = Path(__file__).resolve().parents[1] / PACKAGE
ROOT = "<root>"  # modules directly in the package: settings, db, storage, logs, ...

# docs/architecture.md: "milter, pipe and jobs never import each other", not even through
# another module: the three halves of the mail path share only the package root.
MAIL_PATH = ("milter", "pipe", "jobs")

# Which subpackages each subpackage may import (besides the root, which all may). Any pair
# not linked here has never imported each other and must not start to: a new edge is a
# design decision, made here and in docs/architecture.md, not a side effect of a convenient
# import.
ALLOWED: dict[str, set[str]] = {
    "api": {"domains", "inbox", "ops", "webhooks"},
    "devstack": {"pipe"},
    "domains": {"milter"},
    "inbox": {"api", "ops", "webhooks"},
    "jobs": set(),
    "lifecycle": {"inbox", "ops"},
    "milter": {"domains"},
    "ops": {"domains", "milter", "pipe", "webhooks"},
    "pipe": {"domains"},
    "webhooks": {"ops"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for path in sorted(SOURCE.rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def _resolve(name: str) -> str | None:
    """The module that `import name` loads last: name itself, else its nearest package."""
    known = modules()
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _imported(module: str, path: Path) -> Iterator[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE and (target := _resolve(alias.name)):
                    yield target
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..pipe import y
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            if base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                target = submodule if submodule in modules() else _resolve(base)
                if target:
                    yield target


@cache
def graph() -> dict[str, frozenset[str]]:
    """module → the package modules it imports."""
    return {
        module: frozenset(set(_imported(module, path)) - {module})
        for module, path in modules().items()
    }


def subpackage(module: str) -> str:
    parts = module.split(".")
    if len(parts) >= 2 and (SOURCE / parts[1]).is_dir():
        return parts[1]
    return ROOT


def cycles(edges: dict[str, frozenset[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _path(edges: dict[str, frozenset[str]], start: str, goal: set[str]) -> list[str] | None:
    """An import chain from `start` to a module in `goal`, if any (breadth first)."""
    previous: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(edges[node]):
                if child in previous:
                    continue
                previous[child] = node
                if child in goal:
                    chain = [child]
                    while (step := previous[chain[-1]]) is not None:
                        chain.append(step)
                    return chain[::-1]
                following.append(child)
        frontier = following
    return None


def test_the_graph_is_read_whole() -> None:
    """A guard on the reader itself: it sees imports of every form the package uses."""
    edges = graph()
    assert len(edges) > 100
    assert "orderflow_ingest.settings" in edges["orderflow_ingest.pipe.build"]  # in a function
    assert "orderflow_ingest.pipe.protocol" in edges["orderflow_ingest.pipe.service"]
    assert "orderflow_ingest.milter.dkimpy_fast" in edges["orderflow_ingest.milter.command"]


def test_the_cycle_finder_finds_cycles() -> None:
    edges = {
        "a": frozenset({"b"}),
        "b": frozenset({"c"}),
        "c": frozenset({"a"}),
        "d": frozenset({"a", "e"}),
        "e": frozenset({"d"}),
        "f": frozenset(),
    }
    assert sorted(cycles(edges)) == [["a", "b", "c"], ["d", "e"]]


def test_no_module_imports_itself_back() -> None:
    found = cycles(graph())
    assert not found, (
        "import cycles (break each one; a lazy import does not count as broken):\n"
        + ("\n".join(" -> ".join(component) for component in found))
    )


def test_milter_pipe_and_jobs_never_import_each_other() -> None:
    edges = graph()
    for source in MAIL_PATH:
        others = {m for m in edges if subpackage(m) in MAIL_PATH and subpackage(m) != source}
        for module in sorted(m for m in edges if subpackage(m) == source):
            chain = _path(edges, module, others)
            assert chain is None, f"{source} reaches {subpackage(chain[-1])}: " + " -> ".join(chain)


def test_subpackages_import_only_what_they_did() -> None:
    edges = graph()
    actual: dict[str, set[str]] = {}
    for module, targets in edges.items():
        for target in targets:
            source, destination = subpackage(module), subpackage(target)
            if ROOT not in (source, destination) and source != destination:
                actual.setdefault(source, set()).add(destination)
    unknown = sorted(set(actual) - set(ALLOWED))
    assert not unknown, f"a new subpackage: say in ALLOWED what it may import ({unknown})"
    new = {
        f"{source} -> {destination}"
        for source, destinations in actual.items()
        for destination in destinations - ALLOWED.get(source, set())
    }
    assert not new, f"subpackages that never imported each other now do: {sorted(new)}"
    for source in MAIL_PATH:
        assert not ALLOWED[source] & set(MAIL_PATH), "ALLOWED contradicts the architecture"
