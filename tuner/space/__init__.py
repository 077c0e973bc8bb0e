"""Search spaces: YAML files parsed once into frozen, validated objects.

>>> from tuner.space import load_space
>>> space = load_space("quick")
>>> space.task.dataset
'digits'
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tuner.catalogue import CATALOGUE, OPTIMIZER_HYPER, SCHEDULE_HYPER
from tuner.errors import SpaceError
from tuner.space._load import TASK_KEYS, check_as_written, parse_engine, parse_space, read_yaml
from tuner.space._params import (
    Categorical,
    Fixed,
    FloatRange,
    IntRange,
    Param,
    describe,
    grid_values,
    sample,
    walk,
)
from tuner.space._schema import EarlyStopping, EngineSpec, PrunerSpec, SamplerSpec, Space, Task

__all__ = [
    "CATALOGUE",
    "OPTIMIZER_HYPER",
    "SCHEDULE_HYPER",
    "TASK_KEYS",
    "Categorical",
    "EarlyStopping",
    "EngineSpec",
    "Fixed",
    "FloatRange",
    "IntRange",
    "Param",
    "PrunerSpec",
    "SamplerSpec",
    "Space",
    "Task",
    "builtin_spaces",
    "describe",
    "grid_values",
    "load_space",
    "parse_engine",
    "parse_space",
    "parse_with_overrides",
    "sample",
    "spaces_dir",
    "walk",
]


def spaces_dir() -> Path:
    """Where the built-in spaces are: inside the installed package, or the repository root."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "search_spaces", package.parent / "search_spaces"):
        if candidate.is_dir():
            return candidate
    raise SpaceError(f"the built-in search spaces are missing (looked next to {package})")


def builtin_spaces() -> dict[str, Path]:
    """Built-in space names and their files, sorted by name."""
    return {p.stem: p for p in sorted(spaces_dir().glob("*.yaml"))}


def load_space(name_or_path: str | Path, overrides: Mapping[str, Any] | None = None,
               named: Mapping[str, str] | None = None) -> Space:
    """Load a built-in space by name, or any YAML file by path, and validate it.

    ``overrides`` are merged into the mapping before validation: top-level keys
    (``seed``, ``trials``, ``engine``) directly, and ``task`` keys (``epochs``, ``dataset``) into
    the task, so they are checked and recorded like the file's own values. ``named``
    gives how a message names an override (``{"metric": "--metric"}``; default: as a key
    of the file).
    """
    path = Path(name_or_path)
    builtin = builtin_spaces()
    if str(name_or_path) in builtin and not path.exists():
        path = builtin[str(name_or_path)]
    elif not path.exists():
        raise SpaceError(f"no search space {str(name_or_path)!r}: not a file, and not one of the "
                         f"built-in spaces ({', '.join(builtin)})")
    source = str(path) if path.parent != spaces_dir() else f"search_spaces/{path.name}"
    return parse_with_overrides(read_yaml(path), overrides or {}, named, name=path.stem,
                                source=source)


def parse_with_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any],
                         named: Mapping[str, str] | None = None, *, name: str,
                         source: str) -> Space:
    """:func:`parse_space` of ``raw`` (a file's mapping, or a :class:`Space`'s ``raw``)
    with ``overrides`` merged in as :func:`load_space` describes, after the values they
    replace are checked as written."""
    check_as_written(raw, overrides, source)
    merged = dict(raw)
    origins = {}
    for key, value in overrides.items():
        where = key if key in ("seed", "trials", "engine") else f"task.{key}"
        if key in ("seed", "trials", "engine"):
            merged[key] = value
        else:
            task = merged.get("task")
            merged["task"] = {**(task if isinstance(task, Mapping) else {}), key: value}
        if named and key in named:
            origins[where] = named[key]
    return parse_space(merged, name=name, source=source, origins=origins)
