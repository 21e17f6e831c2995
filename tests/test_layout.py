"""
The shape of the package, pinned: imports point down the layers only (no cycles, not even
under ``TYPE_CHECKING``), no module shadows a standard-library one, and modules, classes
and functions stay small enough to hold in one's head. docs/architecture.md draws it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "substantial"

#: Each layer may import from its own layer and from the layers after it, never before.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "face",
        (
            "substantial",
            "substantial.cli",
            "substantial._cli",
            "substantial.__main__",
            "substantial.logs",
            "substantial.ops",
            "substantial.telemetry",
            "substantial.testing",
            "substantial._ui",
        ),
    ),
    (
        "client/agent",
        ("substantial._conductor", "substantial._client", "substantial._agent", "substantial._ops"),
    ),
    ("engine", ("substantial._engine",)),
    ("store", ("substantial._store",)),
    ("core", ("substantial._core",)),
    (
        "wire/codec",
        (
            "substantial.codec",
            "substantial._json_tags",
            "substantial._allow",
            "substantial.protocol",
        ),
    ),
    ("backends", ("substantial.backends",)),
    ("errors", ("substantial.errors",)),
]

MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name.endswith("_pb2.py"):
            continue
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _layer(module: str) -> int:
    best, rank = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    if rank < 0:
        raise AssertionError(f"module {module} is in no layer: add it to LAYERS")
    return rank


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:  # a submodule if there is one, else a name in base
                name = f"{base}.{alias.name}"
                found.append((node.lineno, name if name in MODULES else base))
    return [(line, name) for line, name in found if name.split(".")[0] == "substantial"]


def _resolve(name: str) -> str | None:
    """The package module an imported name belongs to (longest known prefix)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module: str) -> None:
    mine = _layer(module)
    for line, name in _imports(module, MODULES[module]):
        target = _resolve(name)
        if target is None or target == module:
            continue
        theirs = _layer(target)
        assert theirs >= mine, (
            f"{MODULES[module].name}:{line} imports {target} "
            f"({LAYERS[theirs][0]}), a layer above {module} ({LAYERS[mine][0]})"
        )


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        targets = {_resolve(name) for _, name in _imports(module, path)}
        graph[module] = {t for t in targets if t is not None and t != module}
        # a package's __init__ importing its own submodules is how a package shows its face
        graph[module] -= {t for t in graph[module] if t.startswith(module + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles (TYPE_CHECKING ones included):\n" + "\n".join(cycles)


def test_no_module_shadows_the_standard_library() -> None:
    clashes = sorted(
        module for module in MODULES if module.rpartition(".")[2] in sys.stdlib_module_names
    )
    assert not clashes, f"modules named like standard-library ones: {clashes}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_sizes_a_person_can_hold(module: str) -> None:
    path = MODULES[module]
    source = path.read_text()
    lines = len(source.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name}: {lines} lines > {MAX_MODULE_LINES}"
    for node in ast.walk(ast.parse(source)):
        size = (getattr(node, "end_lineno", None) or 0) - getattr(node, "lineno", 0) + 1
        if isinstance(node, ast.ClassDef):
            assert size <= MAX_CLASS_LINES, f"{path.name}: class {node.name}: {size} lines"
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert size <= MAX_FUNCTION_LINES, f"{path.name}: {node.name}(): {size} lines"
