"""Bulk-loading trials straight into Optuna's tables (and the tuner's ``tuner_trials``),
as ``tuner bench query`` builds its synthetic study of 100,000 trials: a few thousand
rows per ``INSERT`` where Optuna's API would take a transaction per write.

The rows are Optuna's own (``trials``, ``trial_params``, ``trial_values``,
``trial_intermediate_values``), so Optuna reads the study back as it reads any other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select

from tuner.storage._store import TunerStorage
from tuner.storage._tables import trial_info
from tuner.storage.optuna_tables import intermediate_values, trial_params, trial_values, trials

Rows = Sequence[Mapping[str, Any]]


def next_trial_id(storage: TunerStorage) -> int:
    """The trial id after the largest in the database (1 in an empty one)."""
    with storage.session() as conn:
        return (conn.execute(select(func.max(trials.c.trial_id))).scalar() or 0) + 1


def insert_trials(storage: TunerStorage, *, trial_rows: Rows, params: Rows, values: Rows,
                  steps: Rows, tuner_rows: Rows) -> None:
    """Insert trials in one transaction: their rows of ``trials``, ``trial_params``,
    ``trial_values``, ``trial_intermediate_values`` and ``tuner_trials`` (each but the first
    may be empty)."""
    with storage.session() as conn:
        conn.execute(trials.insert(), trial_rows)
        if params:
            conn.execute(trial_params.insert(), params)
        if values:
            conn.execute(trial_values.insert(), values)
        if steps:
            conn.execute(intermediate_values.insert(), steps)
        if tuner_rows:
            conn.execute(trial_info.insert(), tuner_rows)
