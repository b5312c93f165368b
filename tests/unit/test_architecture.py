"""The shape the code promises (../shared/notes/architecture.md), checked:
no module imports in a circle, and data flows one way: front ends -> core ->
neutron / binding, with binding never talking to Neutron."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "kuryr"


def _imports() -> dict[str, set[str]]:
    modules: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        name = name.removesuffix(".__init__")
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kuryr"):
                found.add(node.module or "")
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("kuryr"))
        modules[name] = found
    return {m: {d for d in deps if d in modules and d != m} for m, deps in modules.items()}


def test_no_module_imports_in_a_circle():
    graph = _imports()
    circles = set()

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in graph[node]:
            if nxt == start:
                circles.add(" -> ".join([*path, start]))
            elif nxt not in path:
                walk(start, nxt, [*path, nxt])

    for module in graph:
        walk(module, module, [module])
    assert not circles, sorted(circles)


def test_layers_depend_one_way():
    graph = _imports()
    forbidden = {
        "kuryr.binding": ("kuryr.neutron", "kuryr.core", "kuryr.libnetwork"),
        "kuryr.neutron": ("kuryr.core", "kuryr.binding", "kuryr.libnetwork"),
        "kuryr.core": ("kuryr.libnetwork", "kuryr.server", "kuryr.aio"),
    }
    wrong = [f"{module} imports {dep}" for module, deps in graph.items()
             for layer, banned in forbidden.items() if module.startswith(layer)
             for dep in deps if dep.startswith(banned)]
    assert not wrong, wrong
