"""The package's layers import only downward, and no module imports itself round a circle.

Layers, lowest first (docs/architecture.md draws them):

    core                         errors, files, settings machinery, devices, messages, workers
    tokenizer | data | model     the stages that stand on the core alone, never on each other
    runs                         run directories: layout, checkpoints, loading, import/export
    train | inference            the loop, and the decoding engine; neither imports the other
    config                       a run's whole config, composed of every stage's section
    eval | finetune | serve      the stages that use whole runs, never each other
    book                         the book of a run: it documents every stage below it
    cli                          the `scratchlm` command (__main__ above it runs it)

Every import counts, also one inside a function (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "scratchlm"

LAYERS: list[set[str]] = [
    {"__init__", "core"},
    {"tokenizer", "data", "model"},
    {"runs"},
    {"train", "inference"},
    {"config"},
    {"eval", "finetune", "serve"},
    {"book"},
    {"cli"},
    {"__main__"},
]
RANK = {stage: rank for rank, stages in enumerate(LAYERS) for stage in stages}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(module: str) -> str:
    """The top-level room of a scratchlm module: scratchlm.train.loop -> train."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path) -> set[str]:
    """The scratchlm modules a file imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from scratchlm.runs import gguf_runs` imports the module scratchlm.runs.gguf_runs.
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "scratchlm" or name.startswith("scratchlm.")}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        graph[name] = {m for m in imports_of(path) if m in files and m != name}
    return graph


def test_every_stage_has_a_layer():
    stages = {stage_of(module) for module in import_graph()}
    assert stages <= set(RANK), f"put {sorted(stages - set(RANK))} in LAYERS"


def test_layers_import_only_downward():
    wrong = []
    for module, targets in import_graph().items():
        for target in targets:
            here, there = stage_of(module), stage_of(target)
            if here != there and RANK[there] >= RANK[here]:
                wrong.append(f"{module} ({here}) imports {target} ({there})")
    assert not wrong, "imports that do not run downward:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    graph = import_graph()
    # Tarjan's strongly connected components: any with two or more modules is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import scratchlm.core.errors\n", {"scratchlm.core.errors"}),
        (
            "def f():\n    from scratchlm.runs import gguf_runs\n",
            {"scratchlm.runs", "scratchlm.runs.gguf_runs"},
        ),
        ("import os\nfrom . import x\n", set()),
    ],
)
def test_imports_of_sees_lazy_and_package_imports(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert imports_of(path) == expected
