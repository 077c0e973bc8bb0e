"""One study's trials: filtered, sorted and limited in SQL; parameters fetched after.

For 100,000 trials of 10 parameters, pivoting every parameter of every trial in Python
takes seconds. So the filter and the sort join only the parameters they name, the
database returns only the rows asked for, and only their parameters are fetched.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, case, select
from sqlalchemy.sql.elements import ColumnElement

from tuner.catalogue import TRIAL_COLUMNS
from tuner.errors import TunerError
from tuner.queries._columns import StudyColumns, distribution
from tuner.queries._compile import compile_filter
from tuner.queries._filter import FilterError, parse
from tuner.queries.schema import as_text, study_directions, trial_params, trial_values
from tuner.queries.schema import trials as trials_table
from tuner.storage import TunerStorage

# Every field of a trial row, besides its parameters.
TRIAL_FIELDS = TRIAL_COLUMNS
_CHUNK = 5000  # ids per IN (...): SQLite allows 32,766 bound parameters per statement
_INF = {"INF_POS": math.inf, "INF_NEG": -math.inf}


def as_datetime(value: Any) -> datetime | None:
    """SQLite hands timestamps back as text through raw SQL; PostgreSQL as datetimes."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def directions(conn: Connection, study_id: int) -> list[str]:
    """``maximize`` or ``minimize`` of each objective, in order."""
    rows = conn.execute(select(study_directions.c.direction).where(
        study_directions.c.study_id == study_id).order_by(study_directions.c.objective))
    return [str(value).lower() for value, in rows]


def direction(conn: Connection, study_id: int) -> str:
    """``maximize`` or ``minimize`` (of the first objective)."""
    return directions(conn, study_id)[0]


def _value_order(desc: bool) -> list[ColumnElement[Any]]:
    """Order by value, with Optuna's infinities (stored as a type, the value NULL) in
    their place and trials without a value last."""
    vtype = as_text(trial_values.c.value_type)
    missing = case((vtype.is_(None), 1), else_=0)
    infinite = case((vtype == "INF_NEG", -1), (vtype == "INF_POS", 1), else_=0)
    value = trial_values.c.value
    if desc:
        return [missing.asc(), infinite.desc(), value.desc().nulls_last()]
    return [missing.asc(), infinite.asc(), value.asc().nulls_last()]


def _order(columns: StudyColumns, sort: Sequence[str], best_first: bool,
           desc_is_best: bool) -> list[ColumnElement[Any]]:
    order: list[ColumnElement[Any]] = []
    if best_first:
        # Complete trials first: a pruned trial's value is only its last report.
        order += [case((as_text(trials_table.c.state) == "COMPLETE", 0), else_=1).asc(),
                  *_value_order(desc_is_best)]
    for key in sort:
        name = key.lstrip("+-").strip()
        desc = key.startswith("-")
        if name == "value":
            order += _value_order(desc)
            continue
        try:
            expr = columns.sort_key(name)
        except FilterError as exc:
            raise FilterError(f"--sort {key!r}: {exc}") from None
        order.append(expr.desc().nulls_last() if desc else expr.asc().nulls_last())
    order.append(trials_table.c.number.asc())
    return order


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    for i in range(0, len(ids), _CHUNK):
        yield list(ids[i:i + _CHUNK])


def _attach_params(conn: Connection, rows: list[dict[str, Any]]) -> None:
    by_id = {r["trial_id"]: r for r in rows}
    for row in rows:
        row["params"] = {}
    query = (select(trial_params.c.trial_id, trial_params.c.param_name,
                    trial_params.c.param_value, trial_params.c.distribution_json))
    for ids in _chunks(list(by_id)):
        for trial_id, name, value, dist in conn.execute(
                query.where(trial_params.c.trial_id.in_(ids)).order_by(trial_params.c.param_id)):
            by_id[trial_id]["params"][name] = distribution(dist).to_external_repr(value)


def trials(storage: TunerStorage, study: str, *, states: Sequence[str] = (),
           where: str | None = None, sort: Sequence[str] = (), best_first: bool = False,
           limit: int | None = None, columns: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One row per trial: its fields (:data:`TRIAL_FIELDS`) and ``params``, a dict.

    ``where`` is a filter such as ``"optimizer == 'adam' and dropout > 0.3"``; ``sort``
    names columns, ``-name`` for descending; ``best_first`` puts complete trials first,
    best value first. ``columns`` are names the caller will show: each must be a field
    or a parameter of the study, or a :class:`FilterError` says which are.

    >>> rows = trials(storage, "reg", where="dropout > 0.3", sort=["-value"], limit=5)
    ... # doctest: +SKIP
    """
    study_id = storage.study_id(study)
    with storage.session() as conn:
        resolver = StudyColumns(conn, study_id, study, storage.tuner_tables)
        for name in columns:
            if name not in TRIAL_FIELDS and resolver.distribution_json(name) is None:
                raise FilterError(f"--columns: {resolver.unknown(name, builtin=TRIAL_FIELDS)}")
        condition = compile_filter(parse(where), resolver, where) if where else None
        goals = directions(conn, study_id) if best_first else []
        if len(goals) > 1:
            raise TunerError(f"study {study!r} has {len(goals)} objectives ({', '.join(goals)}):"
                             f" no trial is best by one value; `tuner trials --study {study}` "
                             "lists them (its value is the first objective's)")
        maximize = bool(goals) and goals[0] == "maximize"
        order = _order(resolver, sort, best_first, maximize)
        query = resolver.base()  # after the filter and the sort: it joins what they named
        if states:
            query = query.where(as_text(trials_table.c.state).in_([s.upper() for s in states]))
        if condition is not None:
            query = query.where(condition)
        query = query.order_by(*order)
        if limit:
            query = query.limit(limit)
        rows = [dict(r._mapping) for r in conn.execute(query)]
        _attach_params(conn, rows)
    for row in rows:
        value_type = row.pop("value_type")
        if value_type in _INF:
            row["value"] = _INF[value_type]
        row["state"] = str(row["state"]).lower()
        start = row["datetime_start"] = as_datetime(row["datetime_start"])
        end = row["datetime_complete"] = as_datetime(row["datetime_complete"])
        row["duration"] = (end - start).total_seconds() if start and end else None
    return rows


def best_trials(storage: TunerStorage, study: str, top: int = 1) -> list[dict[str, Any]]:
    """The ``top`` complete trials, best first; an error when there is none."""
    rows = trials(storage, study, states=("complete",), best_first=True, limit=top)
    if not rows:
        raise TunerError(f"study {study!r} has no complete trial yet")
    return rows


def param_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every parameter name that appears in ``rows``, in first-seen order."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row["params"]))
    return list(names)
