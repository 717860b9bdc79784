"""Layers point one way: the import graph of the repository's top-level packages and modules, read from the
source (every import, function-local ones included), has no cycle, and each layer imports only layers below it.
mup/ is the parameterization's library: it imports nothing that trains, loads data or runs experiments."""

import ast
from collections import defaultdict
from pathlib import Path

from tests.conftest import ROOT

# Bottom to top; a node imports only nodes of lower layers. optim/ knows no config: it is handed plain values.
LAYERS = [
    {"atomic", "perf", "optim"},
    {"config"},
    {"model", "data"},
    {"mup"},
    {"trainer"},
    {"experiments"},
    {"train", "sample", "scripts", "bench"},
    {"acceptance"},  # the GPU acceptance check, over the trainer and the benchmarks' measuring tools
    {"tests"},
]


def sources() -> dict[str, list[Path]]:
    """{node: its .py files}: a node is a top-level module (train.py) or a top-level directory (mup/)."""
    nodes = defaultdict(list)
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        if parts[0].startswith(".") or parts[0] == "out":
            continue
        nodes[parts[0] if len(parts) > 1 else path.stem].append(path)
    return nodes


def import_graph() -> dict[str, set[str]]:
    """{node: the other nodes it imports}. A script imported by its name (scripts/ on sys.path) is scripts."""
    nodes = sources()
    graph = {node: set() for node in nodes}
    alias = {path.stem: "scripts" for path in nodes["scripts"]} | {node: node for node in nodes}
    for node, paths in nodes.items():
        for path in paths:
            for stmt in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(stmt, ast.Import):
                    names = [alias.name for alias in stmt.names]
                elif isinstance(stmt, ast.ImportFrom) and stmt.level == 0:  # relative: its own package
                    names = [stmt.module]
                else:
                    continue
                graph[node] |= {alias[top] for name in names if (top := name.split(".")[0]) in alias} - {node}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str]:
    """A cycle of the graph as a list of nodes (first = last), or [] if there is none."""
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for other in sorted(graph[node]):
            if state.get(other) == "open":
                return path[path.index(other):] + [other]
            if other not in state and (found := visit(other)):
                return found
        state[node] = "closed"
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_the_cycle_finder_finds_cycles():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_the_package_import_graph_has_no_cycle():
    graph = import_graph()
    assert {"mup", "optim", "trainer", "experiments", "config", "train"} <= graph.keys()
    assert cycle(graph) == []


def test_each_layer_imports_only_layers_below_it():
    graph = import_graph()
    layer = {node: i for i, nodes in enumerate(LAYERS) for node in nodes}
    assert set(graph) <= set(layer), f"place {sorted(set(graph) - set(layer))} in LAYERS"
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer[b] >= layer[a])
    assert upward == []


def test_mup_imports_nothing_that_trains_loads_data_or_runs_experiments():
    assert import_graph()["mup"] & {"trainer", "data", "experiments", "scripts", "train"} == set()
