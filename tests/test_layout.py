"""The house: imports go one way. No module imports the entry points (but the Python API, which
wraps them), and no import circles (module A needs B needs A), counting imports inside
functions too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "xares"
ENTRY_POINTS = {"xares.run.train", "xares.run.evaluate"}
# The Python entry point wraps the two command-line ones (as Hydra's CLI does): it alone may
# import them, and nothing imports it.
FACADE = "xares.api"
# `python -m xares.evaluate`, `xares.report`, `xares.compare`: the commands users type, kept where
# they were; each only hands over to the module that does the work.
COMMANDS = {"xares.evaluate", "xares.report", "xares.compare"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}" if base else anchor
                # `from pkg import mod` imports the module; `from mod import name`, the module.
                targets |= {
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                }
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_an_entry_point():
    graph = import_graph()
    assert ENTRY_POINTS <= set(graph)
    importers = {name: sorted(ENTRY_POINTS & targets) for name, targets in graph.items()}
    allowed = {FACADE, *COMMANDS}
    assert {name: hit for name, hit in importers.items() if hit and name not in allowed} == {}
    assert [name for name, targets in graph.items() if targets & allowed] == []


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_run_directory_file_names_are_written_once():
    """Each name a run directory's files have is spelled in xares/layout.py only."""
    from xares import layout

    names = {
        value
        for key, value in vars(layout).items()
        if key.isupper() and isinstance(value, str) and "*" not in value
    }
    prefix = layout.PREDICTIONS_GLOB.split("*")[0]
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "layout.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                if text in names or text.startswith(prefix) or text.endswith(".ckpt"):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {text!r}")
    assert found == []
