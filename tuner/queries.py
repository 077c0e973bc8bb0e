"""Reading the study database back with SQL, without loading every trial into Python.

The queries join Optuna's tables (``studies``, ``trials``, ``trial_values``,
``trial_params``) with the tuner's (``tuner_trials``, ``tuner_epochs``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from optuna.distributions import json_to_distribution
from sqlalchemy import bindparam, text

from tuner.storage import TunerStorage
from tuner.study import require_study

STUDY_COLUMNS = ("study", "direction", "complete", "pruned", "running", "failed", "waiting",
                 "best_value", "created", "last_activity")

_STUDIES_SQL = text("""
SELECT s.study_name AS study,
       d.direction AS direction,
       SUM(CASE WHEN t.state = 'COMPLETE' THEN 1 ELSE 0 END) AS complete,
       SUM(CASE WHEN t.state = 'PRUNED' THEN 1 ELSE 0 END) AS pruned,
       SUM(CASE WHEN t.state = 'RUNNING' THEN 1 ELSE 0 END) AS running,
       SUM(CASE WHEN t.state = 'FAIL' THEN 1 ELSE 0 END) AS failed,
       SUM(CASE WHEN t.state = 'WAITING' THEN 1 ELSE 0 END) AS waiting,
       CASE WHEN d.direction = 'MAXIMIZE' THEN MAX(v.value) ELSE MIN(v.value) END AS best_value,
       MIN(t.datetime_start) AS created,
       MAX(COALESCE(t.datetime_complete, t.datetime_start)) AS last_activity
FROM studies s
JOIN study_directions d ON d.study_id = s.study_id AND d.objective = 0
LEFT JOIN trials t ON t.study_id = s.study_id
LEFT JOIN trial_values v ON v.trial_id = t.trial_id AND t.state = 'COMPLETE'
GROUP BY s.study_id, s.study_name, d.direction
ORDER BY s.study_id
""")


def _as_datetime(value: Any) -> datetime | None:
    """SQLite hands timestamps back as text through raw SQL; PostgreSQL as datetimes."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def studies(storage: TunerStorage) -> list[dict[str, Any]]:
    """One row per study: direction, trials by state, best value, created, last activity."""
    with storage.session() as conn:
        rows = [dict(row._mapping) for row in conn.execute(_STUDIES_SQL)]
    for row in rows:
        row["direction"] = str(row["direction"]).lower()
        row["created"] = _as_datetime(row["created"])
        row["last_activity"] = _as_datetime(row["last_activity"])
    return rows


@functools.lru_cache(maxsize=1024)
def _distribution(distribution_json: str) -> Any:
    return json_to_distribution(distribution_json)


def _direction(storage: TunerStorage, study_id: int) -> str:
    with storage.session() as conn:
        value = conn.execute(text("SELECT direction FROM study_directions WHERE study_id = :s"),
                             {"s": study_id}).scalar()
    return str(value).lower()


_TRIALS_SQL = """
SELECT t.trial_id, t.number, t.state, v.value,
       t.datetime_start, t.datetime_complete,
       i.best_epoch, i.epochs_run, i.seed, i.test_metric
FROM trials t
LEFT JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0
LEFT JOIN tuner_trials i ON i.trial_id = t.trial_id
WHERE t.study_id = :study_id {where}
ORDER BY {order}
{limit}
"""


def trials(storage: TunerStorage, study: str, *, states: Sequence[str] = (),
           best_first: bool = False, limit: int | None = None) -> list[dict[str, Any]]:
    """One row per trial with its state, value, duration, best epoch and parameters."""
    study_id = require_study(storage, study)
    params: dict[str, Any] = {"study_id": study_id}
    where = ""
    if states:
        where = "AND t.state IN :states"
        params["states"] = [s.upper() for s in states]
    order = "t.number"
    if best_first:
        desc = _direction(storage, study_id) == "maximize"
        # Complete trials first: a pruned trial's value is only its last report.
        order = (f"(CASE WHEN t.state = 'COMPLETE' THEN 0 ELSE 1 END), "
                 f"v.value {'DESC' if desc else 'ASC'}, t.number")
    sql = text(_TRIALS_SQL.format(where=where, order=order,
                                  limit="LIMIT :limit" if limit else ""))
    if states:
        sql = sql.bindparams(bindparam("states", expanding=True))
    if limit:
        params["limit"] = limit
    with storage.session() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sql, params)]
        by_id = {r["trial_id"]: r for r in rows}
        if by_id:
            param_sql = text("SELECT trial_id, param_name, param_value, distribution_json "
                             "FROM trial_params WHERE trial_id IN :ids ORDER BY param_id"
                             ).bindparams(bindparam("ids", expanding=True))
            for trial_id, name, value, dist in conn.execute(param_sql, {"ids": list(by_id)}):
                by_id[trial_id].setdefault("params", {})[name] = (
                    _distribution(dist).to_external_repr(value))
    for row in rows:
        start = _as_datetime(row.pop("datetime_start"))
        end = _as_datetime(row.pop("datetime_complete"))
        row["duration"] = (end - start).total_seconds() if start and end else None
        row["state"] = row["state"].lower()
        row.setdefault("params", {})
    return rows


def param_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every parameter name that appears in ``rows``, in first-seen order."""
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row["params"]))
    return list(names)
