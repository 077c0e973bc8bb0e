"""Per-epoch metrics of some trials: the tuner's rows, or Optuna's intermediate values.

A trial the tuner trained has one ``tuner_epochs`` row per epoch (train loss, val loss,
val metric, learning rate, seconds), and a training function of yours may report further
values (``tuner_epoch_metrics``): each name becomes a column after those. Any other trial,
in a plain Optuna database for instance, has only its intermediate values: they become the
``val_metric`` column.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import inspect, select

from tuner.errors import UsageError
from tuner.queries.schema import intermediate_values, trials
from tuner.storage import TunerStorage, epoch_metrics, epochs

CURVE_COLUMNS = ("trial", "epoch", "train_loss", "val_loss", "val_metric", "lr", "seconds")
_SPECIAL = {"INF_POS": math.inf, "INF_NEG": -math.inf, "NAN": math.nan}


def curves(storage: TunerStorage, study: str, numbers: Sequence[int]) -> list[dict[str, Any]]:
    """One row per trial and epoch, for the trials numbered ``numbers``, in that order;
    the further values a training function of yours reported are keys of their own."""
    study_id = storage.study_id(study)
    with storage.session() as conn:
        ids = dict(conn.execute(select(trials.c.number, trials.c.trial_id).where(
            trials.c.study_id == study_id, trials.c.number.in_(list(numbers)))).all())
        missing = [n for n in numbers if n not in ids]
        if missing:
            count = conn.execute(select(trials.c.number).where(trials.c.study_id == study_id)
                                 .order_by(trials.c.number.desc()).limit(1)).scalar()
            known = "it has no trials" if count is None else f"its trials are 0..{count}"
            raise UsageError(f"study {study!r} has no trial {missing[0]}; {known}")
        by_trial: dict[int, list[dict[str, Any]]] = {ids[n]: [] for n in numbers}
        if storage.tuner_tables:
            for row in conn.execute(select(epochs).where(epochs.c.trial_id.in_(list(by_trial)))
                                    .order_by(epochs.c.trial_id, epochs.c.epoch)):
                by_trial[row.trial_id].append(dict(row._mapping))
            _attach_extra(conn, by_trial)
        iv = intermediate_values.c
        for trial_id, step, value, kind in conn.execute(
                select(iv.trial_id, iv.step, iv.intermediate_value, iv.intermediate_value_type)
                .where(iv.trial_id.in_([t for t, rows in by_trial.items() if not rows]))
                .order_by(iv.trial_id, iv.step)):
            by_trial[trial_id].append({"epoch": step, "val_metric": _SPECIAL.get(
                str(kind), value)})
    number_of = {trial_id: n for n, trial_id in ids.items()}
    return [{**{c: None for c in CURVE_COLUMNS}, **row, "trial": number_of[trial_id]}
            for trial_id, rows in by_trial.items() for row in rows]


def curve_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The columns of :func:`curves`' rows: :data:`CURVE_COLUMNS`, then the further
    values' names in the order they first appear."""
    extra = dict.fromkeys(k for row in rows for k in row
                          if k not in CURVE_COLUMNS and k != "trial_id")
    return [*CURVE_COLUMNS, *extra]


def _attach_extra(conn: Any, by_trial: dict[int, list[dict[str, Any]]]) -> None:
    """Each epoch row's further values, by name (a database from before they existed has
    none)."""
    if not inspect(conn).has_table(epoch_metrics.name):
        return
    rows = {(trial_id, row["epoch"]): row for trial_id, rows in by_trial.items() for row in rows}
    m = epoch_metrics.c
    for trial_id, epoch, name, value in conn.execute(
            select(m.trial_id, m.epoch, m.name, m.value)
            .where(m.trial_id.in_(list(by_trial))).order_by(m.trial_id, m.epoch, m.name)):
        if (trial_id, epoch) in rows:
            rows[trial_id, epoch][name] = value
