"""The layers of the package, checked on its source (ast) and at run time.

* ``wire`` is pure: it imports neither pika nor threading, and nothing it
  imports (transitively, inside the package) imports pika;
* only ``transport`` imports pika;
* charts (discovery, cache, mesh) never import the CLI;
* no import cycles between modules (module-level imports; imports inside
  functions and under ``TYPE_CHECKING`` are deliberate late bindings).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "miros_rabbitmq"
NAME = "miros_rabbitmq"


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    top: set[str] = field(default_factory=set)  # module-level imports
    anywhere: set[str] = field(default_factory=set)  # every import, functions included


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _resolve(module: Module, node: ast.ImportFrom) -> list[str]:
    if node.level:
        base = module.name.split(".")
        if not module.is_package:
            base = base[:-1]
        base = base[:len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    # "from a.b import c" may import the submodule a.b.c: keep both candidates
    return [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _scan(module: Module) -> None:
    tree = ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))

    def visit(node: ast.AST, top_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue  # for type checkers only
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                names = _resolve(module, child)
            for name in names:
                module.anywhere.add(name)
                if top_level:
                    module.top.add(name)
            nested = top_level and not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, nested)

    visit(tree, True)


def _modules() -> dict[str, Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name, is_package = _module_name(path)
        module = Module(name, path, is_package)
        _scan(module)
        found[name] = module
    return found


MODULES = _modules()


def _internal(names: set[str]) -> set[str]:
    """The package's modules among imported names (a.b.c -> the longest known prefix)."""
    result = set()
    for name in names:
        parts = name.split(".")
        while parts:
            candidate = ".".join(parts)
            if candidate in MODULES:
                result.add(candidate)
                break
            parts.pop()
    return result


def _external_roots(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names if not name.startswith(NAME)}


def _parents(name: str) -> list[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _closure(start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start, *_parents(start)]
    while todo:
        name = todo.pop()
        if name in seen or name not in MODULES:
            continue
        seen.add(name)
        for imported in _internal(MODULES[name].top):
            todo.extend([imported, *_parents(imported)])
    return seen


def test_the_scan_sees_the_package() -> None:
    assert f"{NAME}.wire.codec" in MODULES and f"{NAME}.transport" in MODULES
    assert "pika" in _external_roots(MODULES[f"{NAME}.transport.link"].top)


WIRE = sorted(name for name in MODULES if name.startswith(f"{NAME}.wire"))


@pytest.mark.parametrize("name", WIRE)
def test_wire_is_pure(name: str) -> None:
    direct = _external_roots(MODULES[name].anywhere)
    assert not direct & {"pika", "threading", "socket", "select"}, (name, direct)
    reached = {m for m in _closure(name)
               if "pika" in _external_roots(MODULES[m].anywhere)}
    assert not reached, f"{name} reaches pika through {sorted(reached)}"


def test_only_transport_imports_pika() -> None:
    importers = sorted(name for name, module in MODULES.items()
                       if "pika" in _external_roots(module.anywhere))
    assert importers and all(name == f"{NAME}.transport" or name.startswith(f"{NAME}.transport.")
                             for name in importers), importers


def test_only_the_miros_module_reaches_into_miros_internals() -> None:
    private = ("_subscribe", "defer_queue", "fifo_subscriptions", "locking_deque", ".namedtuple")
    offenders = []
    for name, module in MODULES.items():
        if name == f"{NAME}._miros":
            continue
        text = module.path.read_text(encoding="utf-8")
        offenders += [(name, word) for word in private if word in text]
    assert not offenders, offenders


CHARTS = sorted(name for name in MODULES
                if name.split(".")[1:2] and name.split(".")[1] in ("discovery", "cache", "mesh"))


@pytest.mark.parametrize("name", CHARTS)
def test_charts_never_import_the_cli(name: str) -> None:
    assert not {m for m in _internal(MODULES[name].anywhere)
                if m.startswith(f"{NAME}.cli")}, name


def test_no_import_cycles() -> None:
    graph = {name: _internal(module.top) - {name} for name, module in MODULES.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    # a package's __init__ importing its own submodule is how packages work, not a cycle
    real = [c for c in cycles if not all(a.startswith(b) or b.startswith(a)
                                         for a, b in zip(c, c[1:], strict=False))]
    assert not real, "import cycles: " + "; ".join(" -> ".join(c) for c in real)


def test_importing_wire_loads_no_pika_at_run_time() -> None:
    code = ("import sys, miros_rabbitmq.wire.codec, miros_rabbitmq.wire.names, "
            "miros_rabbitmq.wire.replay; print('pika' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
