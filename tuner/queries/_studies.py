"""Every study in the database, one row each, in one SQL query."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from tuner.errors import TunerError
from tuner.queries._trials import as_datetime
from tuner.storage import TunerStorage

STUDY_COLUMNS = ("study", "direction", "complete", "pruned", "running", "failed", "waiting",
                 "best_value", "created", "last_activity")

# One pass over the trials, served by Optuna's index on trials(study_id) and the unique
# index on trial_values(trial_id, objective); see `tuner bench query` for the figures.
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
LEFT JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0
                         AND t.state = 'COMPLETE'
GROUP BY s.study_id, s.study_name, d.direction
ORDER BY s.study_id
""")


_DIRECTIONS_SQL = text("""
SELECT s.study_name, d.direction FROM study_directions d
JOIN studies s ON s.study_id = d.study_id
ORDER BY d.study_id, d.objective
""")


def studies(storage: TunerStorage) -> list[dict[str, Any]]:
    """One row per study: direction, trials by state, best value, created, last activity."""
    with storage.session() as conn:
        rows = [dict(row._mapping) for row in conn.execute(_STUDIES_SQL)]
        goals: dict[str, list[str]] = {}
        for name, goal in conn.execute(_DIRECTIONS_SQL):
            goals.setdefault(name, []).append(str(goal).lower())
    for row in rows:
        # A multi-objective study has a direction per objective, and no single best value.
        row["direction"] = ",".join(goals[row["study"]])
        if len(goals[row["study"]]) > 1:
            row["best_value"] = None
        row["created"] = as_datetime(row["created"])
        row["last_activity"] = as_datetime(row["last_activity"])
    return rows


def study_metric(storage: TunerStorage, study: str) -> str | None:
    """The name of the metric a study's value is (a function of yours: its name), or None
    for a study the tuner did not create (or whose stored space it cannot read)."""
    # The space reader loads here, not with the queries: `tuner studies` needs none of it.
    from tuner.run.study import stored_space

    storage.study_id(study)  # a study that does not exist is an error, not None
    try:
        space = stored_space(storage, study)
    except TunerError:  # no stored space, or one this version cannot read
        return None
    return str(space.task.metric).rpartition(":")[2]
