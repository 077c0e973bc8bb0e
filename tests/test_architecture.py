"""The house rules of docs/architecture.md, read from the source: rooms import only rooms
below them, never another room's private names, and few modules sit at the top; SQL is
written only in storage/ (and queries/), and Optuna's private API is reached only through
tuner/storage/optuna_compat.py."""

from __future__ import annotations

import ast
import functools
import inspect
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import optuna

import tuner

PACKAGE = Path(tuner.__file__).resolve().parent

# The rooms, lowest first: a room may import (at run time) only itself and the rooms
# listed before it. The package's face (tuner/__init__.py) and __main__ sit above all.
LAYERS = ["errors", "formatting", "catalogue", "logs", "machine", "usercode", "storage", "data",
          "train", "fused", "space", "run", "queries", "report", "dashboard", "export", "api",
          "bench", "cli"]
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


# -- SQL lives in storage/ (and queries/) -------------------------------------------------

# The rooms that may write SQL: storage, and the query language's compiler over its tables.
SQL_ROOMS = ("storage", "queries")
# Modules that speak SQL: SQLAlchemy and the database drivers.
SQL_MODULES = ("sqlalchemy", "sqlite3", "psycopg", "psycopg2")
# A SQL statement at the start of a string, keywords in capitals as the code writes them
# (so that English such as "select a study" or "DELETE" alone is not taken for SQL).
SQL_STATEMENT = re.compile(
    r"^\s*(SELECT\s+\S|INSERT\s+INTO\s|UPDATE\s+\S+\s+SET\s|DELETE\s+FROM\s"
    r"|(CREATE|DROP)\s+(TABLE|VIEW|INDEX|UNIQUE\s+INDEX|TRIGGER)\s|ALTER\s+TABLE\s"
    r"|PRAGMA\s+\w|WITH\s+\w+\s+AS\s*\()")
# What an SQLAlchemy engine offers that runs or manages SQL (`storage.engine.connect()`).
ENGINE_MEMBERS = frozenset({"connect", "begin", "dispose", "dialect", "raw_connection",
                            "execution_options"})


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes of the module, its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                found.add(id(body[0].value))
    return found


def _sql_uses(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, what) of every use of SQL in a module: an import of SQLAlchemy or a database
    driver (at any depth, type-only ones too); a string that is a SQL statement (an
    f-string with its holes as ``{}``; docstrings are prose and skipped); a call of
    ``.session()`` (the storage's transaction, which hands out a connection); a use of an
    engine's SQL members (``X.engine.connect``, ``.begin``, ``.dispose``, ``.dialect``,
    ...). Not seen: an engine handed on as an argument, or SQL built from pieces that are
    not statements on their own."""
    skipped = _docstrings(tree) | {id(part) for node in ast.walk(tree)
                                   if isinstance(node, ast.JoinedStr) for part in node.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            names = []
        for name in names:
            if name.split(".")[0] in SQL_MODULES:
                yield node.lineno, f"imports {name}"
        if isinstance(node, ast.JoinedStr):
            text = "".join(part.value if isinstance(part, ast.Constant) else "{}"
                           for part in node.values)
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and id(node) not in skipped):
            text = node.value
        else:
            text = ""
        if SQL_STATEMENT.match(text):
            yield node.lineno, f"SQL {text.strip().splitlines()[0][:40]!r}"
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "session"):
            yield node.lineno, f"{ast.unparse(node.func)}()"
        if (isinstance(node, ast.Attribute) and node.attr in ENGINE_MEMBERS
                and isinstance(node.value, ast.Attribute) and node.value.attr == "engine"):
            yield node.lineno, ast.unparse(node)


def test_no_sql_outside_storage_and_queries() -> None:
    """No module outside tuner/storage and tuner/queries writes SQL or holds a database
    connection (see :func:`_sql_uses` for what counts): they call named functions and
    methods of tuner.storage instead."""
    found = [f"{module}:{line} {what}" for module, path in _modules()
             if _room(module) not in SQL_ROOMS
             for line, what in _sql_uses(ast.parse(path.read_text()))]
    assert found == []


# -- Optuna's private API only in tuner/storage/optuna_compat.py ------------------------

COMPAT = "tuner.storage.optuna_compat"
# The storage fast paths subclass Optuna's RDB and cached storages, and the tuner's TPE
# subclasses Optuna's TPESampler: overriding their private methods and reading their
# private state through `self` is what subclassing them takes (tests/test_optuna_compat.py
# and tests/test_tpe.py pin each such member). Nowhere else may do it.
SUBCLASSES_OPTUNA = {"tuner.storage._fast", "tuner.space._tpe"}


@functools.cache
def _optuna_private_names() -> frozenset[str]:
    """The private names (one leading underscore) Optuna's objects carry: the attributes
    and methods of the classes of its public modules and of the private classes the
    compat module re-exports, and the attributes real instances hold (a study on an RDB
    storage, its cache, a trial running and frozen, the pruners and samplers)."""
    from tuner.space.sampling import SAMPLERS
    from tuner.storage import optuna_compat

    modules = [optuna, optuna.storages, optuna.trial, optuna.pruners, optuna.samplers,
               optuna.distributions, optuna.study, optuna.exceptions, optuna_compat]
    classes = {value for module in modules for value in vars(module).values()
               if inspect.isclass(value) and value.__module__.startswith("optuna")}
    rdb = optuna.storages.RDBStorage("sqlite:///:memory:")
    study = optuna.create_study(storage=rdb)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    study.tell(trial, 1.0)
    pruners = optuna.pruners
    instances: list[object] = [
        rdb, study, trial, study.trials[0], vars(study)["_storage"],
        optuna.distributions.FloatDistribution(0, 1), pruners.MedianPruner(),
        pruners.PercentilePruner(50), pruners.SuccessiveHalvingPruner(),
        pruners.HyperbandPruner(), pruners.PatientPruner(None, patience=1),
        pruners.ThresholdPruner(lower=0), pruners.WilcoxonPruner(), pruners.NopPruner()]
    instances += [cls({"x": [1]}) if name == "grid" else cls() for name, cls in SAMPLERS.items()]
    names = {name for cls in classes for name in dir(cls)}
    names |= {name for instance in instances for name in vars(instance)}
    rdb.engine.dispose()
    return frozenset(n for n in names if n.startswith("_") and not n.startswith("__"))


def _is_self(node: ast.expr) -> bool:
    """``self``, ``cls`` or ``super()``: what a class reaches of its own (and its bases')."""
    return (isinstance(node, ast.Name) and node.id in ("self", "cls")) or (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        and node.func.id == "super")


def _root(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _optuna_names(tree: ast.AST) -> set[str]:
    """The names a module imports from Optuna (or from the compat module)."""
    return {alias.asname or alias.name for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
            and (node.module.split(".")[0] == "optuna" or node.module == COMPAT)
            for alias in node.names}


def _optuna_subclass_bodies(tree: ast.AST) -> Iterator[ast.ClassDef]:
    optuna_names = _optuna_names(tree) | {"optuna"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(_root(base) in optuna_names
                                                  for base in node.bases):
            yield node


def _reads_private(node: ast.AST, private: frozenset[str]) -> bool:
    """Whether ``node`` reaches a private name of Optuna's: ``optuna.<...>._x``, ``x._y``
    with ``_y`` in ``private`` on anything but ``self``, ``cls`` or ``super()``, or
    ``getattr(x, "_y")`` (and ``hasattr``, ``setattr``, ``delattr``)."""
    if isinstance(node, ast.Attribute):
        if _root(node) == "optuna":
            return node.attr.startswith("_") and not node.attr.startswith("__")
        return node.attr in private and not _is_self(node.value)
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
            and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in private)


def _optuna_private_uses(tree: ast.AST, private: Iterable[str],
                         subclassing: bool = False) -> Iterator[tuple[int, str]]:
    """(line, what) of every use of Optuna's private API in a module: an import from a
    private module of Optuna (``optuna.storages._rdb.models``) or of a private name
    (``from optuna.storages import _CachedStorage``); an attribute chain from ``optuna``
    through a private name (``optuna.storages._CachedStorage``); a private name Optuna's
    objects carry (``private``), read on anything but ``self``, ``cls`` or ``super()``
    (``trial._trial_id``, ``study._storage``) or through ``getattr``, ``hasattr``,
    ``setattr`` or ``delattr``. Unless ``subclassing`` is allowed, a class deriving from
    an Optuna class may not reach its base's private names through ``self`` or
    ``super()`` nor override them."""
    private = frozenset(private)

    def hidden(parts: Iterable[str]) -> bool:
        return any(p.startswith("_") and not p.startswith("__") for p in parts)

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                node.module.split(".")[0] == "optuna"):
            names = [a.name for a in node.names]
            if hidden(node.module.split(".")) or hidden(names):
                yield node.lineno, f"from {node.module} import {', '.join(names)}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "optuna" and hidden(alias.name.split(".")):
                    yield node.lineno, f"import {alias.name}"
        elif _reads_private(node, private):
            yield node.lineno, ast.unparse(node)
    if subclassing:
        return
    for cls in _optuna_subclass_bodies(tree):
        for node in ast.walk(cls):
            if (isinstance(node, ast.Attribute) and node.attr in private
                    and _is_self(node.value)):
                yield node.lineno, f"{cls.name}: {ast.unparse(node)}"
            elif (isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.name in private):
                yield node.lineno, f"{cls.name} overrides {node.name}"


def test_optunas_private_api_only_in_the_compat_module() -> None:
    """No module but tuner/storage/optuna_compat.py uses Optuna's private API (see
    :func:`_optuna_private_uses` for what counts); the storage fast paths' subclasses
    (:data:`SUBCLASSES_OPTUNA`) may override and read what they inherit."""
    private = _optuna_private_names()
    found = [f"{module}:{line} {what}" for module, path in _modules() if module != COMPAT
             for line, what in _optuna_private_uses(ast.parse(path.read_text()), private,
                                                    subclassing=module in SUBCLASSES_OPTUNA)]
    assert found == []


def test_the_checks_see_sql_and_optunas_private_api() -> None:
    """The SQL and private-API checks find what they are meant to, and pass over prose,
    a space's engine, a class's own private names and Optuna's public dunders."""
    sql = ('"""One SELECT per trial; DELETE FROM is for Optuna."""\n'
           "from sqlalchemy import select\n"
           "def f(storage, space, t):\n"
           '    """SELECT * FROM trials"""\n'
           "    import sqlite3\n"
           '    q = "SELECT state FROM trials WHERE study_id = :s"\n'
           '    r = f"UPDATE {t} SET x = 1"\n'
           "    with storage.session() as conn:\n"
           "        pass\n"
           "    storage.engine.dispose()\n"
           '    return space.engine.name, "DELETE", "select a study"\n')
    assert [line for line, _ in _sql_uses(ast.parse(sql))] == [2, 5, 6, 7, 8, 10]
    source = ("import optuna\n"
              "from optuna.storages._rdb.models import TrialModel\n"
              "from optuna.storages import _CachedStorage, RDBStorage\n"
              "import optuna.samplers._tpe\n"
              "def f(trial, study, row):\n"
              "    getattr(trial, '_cached_frozen_trial', None)\n"
              "    return (trial._trial_id, study._storage, optuna.storages._CachedStorage,\n"
              "            optuna.__version__, row._other)\n"
              "class Mine:\n"
              "    def f(self):\n"
              "        return self._storage\n"
              "class Sub(RDBStorage):\n"
              "    def _get_trials(self):\n"
              "        return super()._get_trials() + self._lock + self._mine\n")
    private = {"_trial_id", "_storage", "_cached_frozen_trial", "_get_trials", "_lock"}
    found = sorted(line for line, _ in _optuna_private_uses(ast.parse(source), private))
    assert found == [2, 3, 4, 6, 7, 7, 7, 13, 14, 14]
    allowed = _optuna_private_uses(ast.parse(source), private, subclassing=True)
    assert sorted(line for line, _ in allowed) == [2, 3, 4, 6, 7, 7, 7]
    assert {"_trial_id", "_study_id", "_storage", "_cached_frozen_trial", "_backend",
            "_wrapped_pruner", "_contains", "_datetime_start_utc"} <= _optuna_private_names()
