"""The house: imports go one way. No module imports the entry points (but the Python API, which
wraps them), and no import circles (module A needs B needs A), counting imports inside
functions too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "xares"
ENTRY_POINTS = {"xares.run.train", "xares.run.evaluate"}
# The Python entry point wraps the two command-line ones (as Hydra's CLI does): it alone may
# import them, and nothing but its `xares.api` name imports it.
FACADE = "xares.run.api"
# `python -m xares.evaluate`, `xares.report`, `xares.compare`, `xares.data.prefetch` and
# `import xares.api`: the names users type, kept where they were; each only hands over to the
# module that does the work.
COMMANDS = {"xares.evaluate", "xares.report", "xares.compare", "xares.api", "xares.data.prefetch"}
# The package that turns the composed config into a run plan: the config stops here.
RUN_PACKAGE = "xares.run"


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
    hands_over = [name for name, targets in graph.items() if targets & allowed]
    assert [name for name in hands_over if name not in COMMANDS] == []
    assert [name for name in COMMANDS if graph[name] & COMMANDS] == []


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


CONFIG_NAMES = {"omegaconf", "DictConfig", "ListConfig", "OmegaConf", "open_dict", "read_write"}


def config_uses(path: Path) -> list[str]:
    """Where a module imports the config library or names its types (a message may say how to
    convert one: strings are not code)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0], *(a.name for a in node.names)]
        elif isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        found += [
            f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {n}"
            for n in names
            if n in CONFIG_NAMES
        ]  # type: ignore[attr-defined]
    return found


def test_the_config_stops_at_the_run_package():
    """Below the boundary, modules take plan fields: none imports or handles a config node."""
    outside = [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if not module_name(path).startswith(f"{RUN_PACKAGE}.") and module_name(path) != RUN_PACKAGE
    ]
    assert [hit for path in outside for hit in config_uses(path)] == []


def test_the_config_finder_finds_a_config_node(tmp_path):
    module = PACKAGE / "training" / "_probe_config_use.py"
    module.write_text("from omegaconf import DictConfig\n\ndef f(cfg: DictConfig): ...\n")
    try:
        assert len(config_uses(module)) >= 2
    finally:
        module.unlink()


# Values the protocol and the data settings fix in conf/; written as a default in code they
# would be a second source, silently used when the config forgets one.
CONFIG_VALUES = {16000, 256, 128, 1.05, 150}
# The same numbers where they are facts of a pretrained model's architecture, not settings.
ARCHITECTURE = {("encoders/beats.py", 128)}  # BEATs' positional convolution kernel


def defaults_in(path: Path) -> list[str]:
    """Where a module writes one of ``CONFIG_VALUES`` as a default: an argument's default, a
    class attribute (a dataclass field), ``.get(key, value)``, ``getattr(o, name, value)``,
    ``x or value``, or a value in a dict literal."""
    tree = ast.parse(path.read_text())
    candidates: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            candidates += [*node.args.defaults, *(d for d in node.args.kw_defaults if d)]
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.AnnAssign, ast.Assign)) and item.value is not None:
                    candidates.append(item.value)
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "get" and len(node.args) == 2:
                candidates.append(node.args[1])
            if isinstance(func, ast.Name) and func.id == "getattr" and len(node.args) == 3:
                candidates.append(node.args[2])
        elif isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
            candidates.append(node.values[-1])
        elif isinstance(node, ast.Dict):
            candidates += node.values
    where = path.relative_to(PACKAGE).as_posix()
    return [
        f"xares/{where}:{c.lineno}: {c.value!r}"  # type: ignore[attr-defined]
        for c in candidates
        if isinstance(c, ast.Constant)
        and not isinstance(c.value, bool)
        and isinstance(c.value, (int, float))
        and c.value in CONFIG_VALUES
        and (where, c.value) not in ARCHITECTURE
    ]


def test_no_config_value_is_a_default_in_code():
    assert [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in defaults_in(path)] == []


def test_the_default_finder_finds_each_kind(tmp_path):
    probe = tmp_path / "xares_probe.py"
    probe.write_text(
        "def f(rate=16000, *, buffer=256): ...\n"
        "class S:\n    sort_buffer: int = 128\n"
        "x = {}.get('repetition_penalty', 1.05)\n"
        "y = None or 150\n"
        "z = {'max_new_tokens': 150}\n"
        "w = getattr(object, 'rate', 16000)\n"
        "SAMPLE_RATE = 16000\n"  # a named fact of a model, not a default
    )
    moved = PACKAGE / "_probe_defaults.py"
    moved.write_text(probe.read_text())
    try:
        assert len(defaults_in(moved)) == 7
    finally:
        moved.unlink()
