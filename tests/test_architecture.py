"""The layers of docs/DESIGN: data flows one way, and no module imports itself back.

Every ``import``/``from ... import`` of a samhess module is read from the source (function-level
imports included, since a circle through a late import is still a circle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"

#: What each layer must not import.
FORBIDDEN = {
    "samhess.optim": ("samhess.curvature", "samhess.analysis", "samhess.experiments",
                      "samhess.cli"),
    "samhess.curvature": ("samhess.optim", "samhess.analysis", "samhess.experiments",
                          "samhess.cli"),
    "samhess.analysis": ("samhess.experiments", "samhess.cli"),
    "samhess.experiments": ("samhess.cli", "samhess.integrations"),
    # beside the layers, on samhess.optim; nothing but the user imports it
    "samhess.integrations": ("samhess.curvature", "samhess.analysis", "samhess.experiments",
                             "samhess.cli"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted((SOURCE / "samhess").rglob("*.py")):
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[_module_name(path)] = {name for name in found if name.startswith("samhess")}
    return graph


GRAPH = _imports()


@pytest.mark.parametrize("layer", list(FORBIDDEN))
def test_no_layer_imports_a_layer_above_it(layer):
    offenders = sorted(
        f"{module} imports {name}"
        for module, names in GRAPH.items() if module == layer or module.startswith(layer + ".")
        for name in names if name.startswith(FORBIDDEN[layer])
    )
    assert offenders == []


def test_no_import_circles():
    """Tarjan's strongly connected components of the module graph are all single modules
    (a package's ``__init__`` re-exporting its own modules is not a circle)."""
    nodes = sorted(GRAPH)
    edges = {
        module: {name for name in GRAPH[module] if name in GRAPH and name != module
                 and not module.startswith(name + ".")}
        for module in nodes
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in sorted(edges[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in nodes:
        if module not in index:
            visit(module)
    assert circles == []
