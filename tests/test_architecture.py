"""The house rules of docs/architecture.md, read from the source: rooms import only rooms
below them, never another room's private names, and few modules sit at the top."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import tuner

PACKAGE = Path(tuner.__file__).resolve().parent

# The rooms, lowest first: a room may import (at run time) only itself and the rooms
# listed before it. The package's face (tuner/__init__.py) and __main__ sit above all.
LAYERS = ["errors", "formatting", "catalogue", "logs", "usercode", "storage", "data", "train",
          "fused", "space", "run", "queries", "report", "dashboard", "export", "api", "bench",
          "cli"]
MAX_FLAT_MODULES = 12


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[tuple[int, str, list[str]]]:
    """(line, module, names) of every run-time import of a tuner module, at any depth
    (an import inside a function is a dependency too); type-only imports are skipped."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                node.module == "tuner" or node.module.startswith("tuner.")):
            yield node.lineno, node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tuner."):
                    yield node.lineno, alias.name, []
        stack.extend(ast.iter_child_nodes(node))


def _edges() -> Iterator[tuple[str, int, str, list[str]]]:
    for module, path in _modules():
        for line, target, names in _imports(ast.parse(path.read_text())):
            if target == "tuner":  # `from tuner import queries`: the modules named
                for name in names:
                    yield module, line, f"tuner.{name}", []
            else:
                yield module, line, target, names


def test_every_room_is_placed() -> None:
    rooms = {_room(m) for m, _ in _modules()} - {"", "__main__"}
    assert sorted(rooms - set(LAYERS)) == []
    assert sorted(set(LAYERS) - rooms) == []


def test_rooms_import_only_the_rooms_below_them() -> None:
    upward = []
    for module, line, target, _ in _edges():
        here, there = _room(module), _room(target)
        if here in ("", "__main__") or here == there or not there:
            continue
        if LAYERS.index(there) > LAYERS.index(here):
            upward.append(f"{module}:{line} imports {target}")
    assert upward == []


def test_no_room_imports_another_rooms_private_names() -> None:
    private = []
    for module, line, target, names in _edges():
        if _room(module) == _room(target):
            continue
        hidden = [p for p in target.split(".") if p.startswith("_")]
        hidden += [n for n in names if n.startswith("_")]
        if hidden:
            private.append(f"{module}:{line} imports {target} {hidden}")
    assert private == []


def test_few_modules_at_the_top() -> None:
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(flat) <= MAX_FLAT_MODULES, flat


def test_the_checks_see_an_upward_import() -> None:
    """The walk finds imports inside functions and skips type-only ones."""
    source = ("from typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n    from tuner.cli import cli\n"
              "def f():\n    from tuner.run.runner import run_study\n")
    found = [target for _, target, _ in _imports(ast.parse(source))]
    assert found == ["tuner.run.runner"]
