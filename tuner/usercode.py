"""Code of yours that the tuner calls: a model builder, a loss, a metric, a data function
or a whole training function, named as ``package.module:function`` or
``path/file.py:function``.

>>> is_reference("examples/my_model.py:build")
True
>>> is_reference("accuracy")
False

A file is imported once per process (again only if it changes on disk), with its own
folder on ``sys.path`` so that it may import the files beside it. Functions handed to
the Python API (``tuner.optimize(objective=fn)``) are :func:`register`-ed under their
``module:qualname`` and resolved without importing anything.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.errors import DataError

_registered: dict[str, Callable[..., Any]] = {}
_imported: dict[tuple[str, int, int], Any] = {}


def is_reference(source: str) -> bool:
    """``pkg.mod:function`` or ``file.py:function`` rather than a data file or a name."""
    head, sep, tail = source.rpartition(":")
    return bool(sep) and tail.isidentifier() and not Path(source).exists() and (
        head.endswith(".py") or all(part.isidentifier() for part in head.split(".")))


def reference_of(function: Callable[..., Any]) -> str:
    """The ``module:qualname`` a function is recorded under (a nested function's or a
    lambda's qualified name with its dots and brackets as underscores)."""
    module = getattr(function, "__module__", None) or "__main__"
    name = getattr(function, "__qualname__", None) or type(function).__name__
    if not name.isidentifier():
        name = re.sub(r"\W+", "_", name).strip("_") or "function"
    return f"{module}:{name}"


def register(function: Callable[..., Any]) -> str:
    """Make ``function`` resolvable in this process under :func:`reference_of` (the Python
    API's functions need not be importable); returns that reference."""
    reference = reference_of(function)
    _registered[reference] = function
    return reference


def _label(what: str, reference: str) -> str:
    """How messages name a reference: ``--model 'my.py:build'``, or just the reference."""
    return f"{what} {reference!r}" if what else repr(reference)


def _load_file(path: Path, what: str) -> Any:
    """The module of a ``.py`` file, imported once per version of the file."""
    try:
        stat = path.stat()
    except OSError:
        raise DataError(f"{what}: no such file {str(path)!r}") from None
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key in _imported:
        return _imported[key]
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise DataError(f"{what}: cannot import {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.append(folder)  # so that it may import the files beside it
    # Registered under its name (pickle finds its classes there), in place of an earlier
    # file of yours with that name, but never of a module of Python's or a package's.
    previous = sys.modules.get(path.stem)
    registered = previous is None or previous in _imported.values()
    if registered:
        sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        if registered:
            if previous is None:
                sys.modules.pop(path.stem, None)
            else:
                sys.modules[path.stem] = previous
        raise
    _imported[key] = module
    return module


def import_reference(reference: str, what: str) -> Callable[..., Any]:
    """The callable named by ``package.module:function`` or ``path/file.py:function``.

    Every failure is a :class:`~tuner.errors.DataError` of one line that starts with
    ``what`` (the option that named it, if any) and the reference.
    """
    what = _label(what, reference)
    if reference in _registered:
        return _registered[reference]
    module_name, _, attr = reference.rpartition(":")
    try:
        if module_name.endswith(".py"):
            module = _load_file(Path(module_name), what)
        else:
            module = importlib.import_module(module_name)
    except DataError:
        raise
    except SyntaxError as exc:  # the user's file does not parse
        raise DataError(f"{what}: cannot import {module_name!r}: {exc.msg} "
                        f"({Path(exc.filename or module_name).name}, line {exc.lineno})") from None
    except Exception as exc:  # ImportError, or whatever the module's own code raised
        reason = str(exc) if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}"
        raise DataError(f"{what}: cannot import {module_name!r}: {reason}") from None
    function = getattr(module, attr, None)
    if not callable(function):
        hint = ("; it was a function of a Python session: run the study from Python, "
                "with the function passed to tuner.optimize" if module_name == "__main__" else "")
        raise DataError(f"{what}: {module_name!r} has no function {attr!r}{hint}")
    return function


def check_signature(function: Callable[..., Any], arguments: tuple[str, ...], what: str,
                    reference: str) -> None:
    """Refuse a function that cannot be called with ``len(arguments)`` positional
    arguments, naming the ones it should take."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin without a signature: let it be tried
        return
    try:
        signature.bind(*arguments)
    except TypeError:
        raise DataError(f"{_label(what, reference)}: must take ({', '.join(arguments)}), but its "
                        f"signature is {signature}") from None


def resolve(reference: str, what: str, arguments: tuple[str, ...]) -> Callable[..., Any]:
    """:func:`import_reference`, then :func:`check_signature`."""
    function = import_reference(reference, what)
    check_signature(function, arguments, what, reference)
    return function


@dataclass(frozen=True)
class Source:
    """The text of the file that defines a function, to carry it in an export."""

    module: str  # the name its functions are defined under
    filename: str
    text: str
    function: str

    @property
    def sha256(self) -> str:
        return source_hash(self.text)


def source_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def source_of(reference: str, what: str) -> Source:
    """The source of the file defining ``reference``'s function; refused (one line) when
    that file imports other files of the project, which an export cannot carry."""
    function = import_reference(reference, what)
    module = sys.modules.get(getattr(function, "__module__", ""), None)
    path = getattr(module, "__file__", None) or inspect.getsourcefile(function)
    what = _label(what, reference)
    if path is None:
        raise DataError(f"{what}: its source file cannot be found")
    file = Path(path)
    text = file.read_text()
    local = local_imports(text, file.parent)
    if local:
        raise DataError(f"{what}: {file.name} imports {', '.join(local)} from "
                        f"beside it, which an export cannot carry; put what it needs into "
                        f"{file.name}, or install your code as a package")
    return Source(function.__module__, file.name, text, function.__name__)


def local_imports(text: str, folder: Path) -> list[str]:
    """The files of ``folder`` that source ``text`` imports (``name.py`` or a package
    folder ``name/``), and any relative import."""
    found: list[str] = []
    for node in ast.walk(ast.parse(text)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append("." * node.level + (node.module or ""))
                continue
            names = [(node.module or "").split(".")[0]]
        for name in names:
            if (folder / f"{name}.py").exists() or (folder / name / "__init__.py").exists():
                found.append(name)
    return sorted(set(found))


def load_source(source: Source) -> Callable[..., Any]:
    """Run an embedded source as a fresh module (not in ``sys.modules``) and return its
    function. This runs code: callers ask the user's trust first."""
    # A name of its own, registered (dataclasses and pickling look modules up by name),
    # that shadows no module of this process.
    name = f"tuner_embedded_{source.sha256[:12]}_{source.module}"
    module = sys.modules.get(name)
    if module is None:
        module = type(sys)(name)
        module.__file__ = f"<embedded {source.filename}>"
        sys.modules[name] = module
        try:
            exec(compile(source.text, module.__file__, "exec"), module.__dict__)
        except BaseException:
            del sys.modules[name]
            raise
    function = getattr(module, source.function, None)
    if not callable(function):
        raise DataError(f"the embedded {source.filename} has no function {source.function!r}")
    return function
