"""Optuna's tables as SQLAlchemy table clauses: only the columns the queries read (and
the bench's bulk load writes, :mod:`tuner.storage._bulk`).

Optuna's ORM models are private API (:mod:`tuner.storage.optuna_compat`); these
lightweight clauses name the stable schema instead. The query language
(:mod:`tuner.queries`) compiles ``--where`` over them, through
:mod:`tuner.queries.schema`. Columns that are enums on PostgreSQL (``state``,
``value_type``) are compared through :func:`as_text`: psycopg binds strings as VARCHAR,
and PostgreSQL has no ``trialstate = varchar`` operator.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import DateTime, Float, Integer, String, cast, column, table
from sqlalchemy.sql.elements import ColumnElement

from tuner.catalogue import TRIAL_STATES

studies = table("studies", column("study_id", Integer), column("study_name", String))

study_directions = table("study_directions", column("study_id", Integer),
                         column("direction"), column("objective", Integer))

trials = table("trials", column("trial_id", Integer), column("number", Integer),
               column("study_id", Integer), column("state"),
               column("datetime_start", DateTime), column("datetime_complete", DateTime))

trial_params = table("trial_params", column("param_id", Integer), column("trial_id", Integer),
                     column("param_name", String),
                     column("param_value", Float), column("distribution_json", String))

trial_values = table("trial_values", column("trial_id", Integer), column("objective", Integer),
                     column("value", Float), column("value_type"))

intermediate_values = table("trial_intermediate_values", column("trial_id", Integer),
                            column("step", Integer), column("intermediate_value", Float),
                            column("intermediate_value_type"))

# Trial states as Optuna stores them, by the lower-case names the tuner prints.
STATES = TRIAL_STATES


def as_text(enum_column: ColumnElement[Any]) -> ColumnElement[str]:
    """An enum column as text, comparable with bound strings on every database."""
    return cast(enum_column, String)
