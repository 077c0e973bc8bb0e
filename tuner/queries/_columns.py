"""The columns of one study's trials, as SQL expressions: built-in ones and parameters.

A parameter becomes a column by an outer join of ``trial_params`` on (trial id,
parameter name), which Optuna's unique index on those two columns serves. Only the
parameters a filter or a sort mentions are joined: the rest are fetched afterwards,
for the returned rows alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from optuna.distributions import CategoricalDistribution, json_to_distribution
from sqlalchemy import Connection, Select, and_, case, extract, func, null, select
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import NamedFromClause

from tuner.queries._filter import FilterError
from tuner.queries.schema import STATES, as_text, trial_params, trial_values, trials
from tuner.storage import trial_info

# Built-in columns a filter or a sort may name (every parameter may be named too).
BUILTIN = ("number", "state", "value", "duration", "best_epoch", "epochs_run", "seed",
           "test_metric")
_TUNER = ("best_epoch", "epochs_run", "seed", "test_metric")


@functools.lru_cache(maxsize=1024)
def distribution(distribution_json: str) -> Any:
    return json_to_distribution(distribution_json)


@dataclass(frozen=True)
class Column:
    """A column to filter or sort on: its SQL expression and how to compare with it."""

    name: str
    expr: ColumnElement[Any]
    kind: str  # "number", "state" or "categorical"
    choices: tuple[Any, ...] = ()


def _duration(dialect: str) -> ColumnElement[Any]:
    start, end = trials.c.datetime_start, trials.c.datetime_complete
    if dialect == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return extract("epoch", end - start)


class StudyColumns:
    """Resolves column names for one study, joining parameters as they are named.

    ``select`` starts as trials ⟕ values (⟕ tuner_trials when the tables exist); each
    parameter named adds one outer join to it.
    """

    def __init__(self, conn: Connection, study_id: int, study: str, tuner_tables: bool) -> None:
        self.conn = conn
        self.study_id = study_id
        self.study = study
        self.tuner_tables = tuner_tables
        self.joins: dict[str, NamedFromClause] = {}
        self._columns: dict[str, Column] = {}

    def builtin(self, name: str) -> ColumnElement[Any]:
        if name == "number":
            return trials.c.number
        if name == "state":
            return as_text(trials.c.state)
        if name == "value":
            return trial_values.c.value
        if name == "duration":
            return _duration(self.conn.dialect.name)
        if not self.tuner_tables:
            return null()
        return trial_info.c[name]

    def column(self, name: str, pos: int | None = None) -> Column:
        if name not in self._columns:
            self._columns[name] = self._resolve(name, pos)
        return self._columns[name]

    def _resolve(self, name: str, pos: int | None) -> Column:
        if name in BUILTIN:
            kind = "state" if name == "state" else "number"
            return Column(name, self.builtin(name), kind, STATES if kind == "state" else ())
        first = self.distribution_json(name)
        if first is None:
            where = f" at position {pos}" if pos is not None else ""
            raise self.unknown(name, where)
        alias = trial_params.alias(f"p{len(self.joins)}")
        self.joins[name] = alias
        dist = distribution(first)
        # Optuna requires a categorical parameter to keep its choices throughout a study,
        # so one distribution tells the index of every choice.
        if isinstance(dist, CategoricalDistribution):
            return Column(name, alias.c.param_value, "categorical", tuple(dist.choices))
        return Column(name, alias.c.param_value, "number")

    def distribution_json(self, name: str) -> str | None:
        """One distribution of parameter ``name`` in the study, None when it has none."""
        return self.conn.execute(
            select(trial_params.c.distribution_json)
            .select_from(trials.join(trial_params, trial_params.c.trial_id == trials.c.trial_id))
            .where(trials.c.study_id == self.study_id, trial_params.c.param_name == name)
            .limit(1)).scalar()

    def unknown(self, name: str, where: str = "",
                builtin: tuple[str, ...] = BUILTIN) -> FilterError:
        known = ", ".join([*builtin, *self.param_names()])
        return FilterError(f"unknown column {name!r}{where}; study {self.study!r} has: {known}")

    def param_names(self) -> list[str]:
        """Every parameter name in the study (one pass over its parameters)."""
        rows = self.conn.execute(
            select(trial_params.c.param_name).distinct()
            .where(trial_params.c.trial_id.in_(
                select(trials.c.trial_id).where(trials.c.study_id == self.study_id)))
            .order_by(trial_params.c.param_name))
        return [r[0] for r in rows]

    def sort_key(self, name: str) -> ColumnElement[Any]:
        """What to order by: categoricals by their choice's text, states by name."""
        col = self.column(name)
        if col.kind == "categorical":
            return case({i: str(c) for i, c in enumerate(col.choices)}, value=col.expr)
        return col.expr

    def base(self) -> Select[Any]:
        """The trials of the study with their value (and the tuner's row), params joined."""
        source = trials.outerjoin(trial_values, and_(trial_values.c.trial_id == trials.c.trial_id,
                                                     trial_values.c.objective == 0))
        if self.tuner_tables:
            source = source.outerjoin(trial_info, trial_info.c.trial_id == trials.c.trial_id)
        for name, alias in self.joins.items():
            source = source.outerjoin(alias, and_(alias.c.trial_id == trials.c.trial_id,
                                                  alias.c.param_name == name))
        tuner = [self.builtin(c).label(c) for c in _TUNER]
        return (select(trials.c.trial_id, trials.c.number, trials.c.state,
                       trial_values.c.value, trial_values.c.value_type,
                       trials.c.datetime_start, trials.c.datetime_complete, *tuner)
                .select_from(source).where(trials.c.study_id == self.study_id))
