"""Flat SQL views over the study database, for any SQL client (sqlite3, psql).

Optuna's schema is normalized (a trial's value, parameters and state live in four
tables, categorical parameters as indexes into their choices); the views give one row
per trial (``trial_summary``) and one row per trial and epoch (``epoch_summary``), so

    sqlite3 storage/tuner.db "select * from trial_summary order by value desc limit 5"

works without knowing Optuna's schema. storage/README.md documents their columns.
They are created, and recreated when their definition changes, whenever the tuner
opens a database for writing (``tuner start``, ``tuner worker``; see
:mod:`tuner.storage._schema`); read-back commands never create anything.
"""

from __future__ import annotations

# What differs between the dialects: JSON functions, durations and enum-typed states.
_DIALECT = {
    "sqlite": {
        "state": "lower(t.state)",
        "duration": "(julianday(t.datetime_complete) - julianday(t.datetime_start)) * 86400.0",
        # json_type keeps true/false/null choices JSON (json_extract would give 1/0/NULL).
        "choice": ("CASE json_type(p.distribution_json, {path}) "
                   "WHEN 'true' THEN json('true') WHEN 'false' THEN json('false') "
                   "WHEN 'null' THEN json('null') "
                   "ELSE json_extract(p.distribution_json, {path}) END"),
        "path": "'$.attributes.choices[' || CAST(p.param_value AS INTEGER) || ']'",
        "kind": "json_extract(p.distribution_json, '$.name')",
        "int": "CAST(p.param_value AS INTEGER)",
        # SQLite's JSON prints 15 digits, which does not round-trip every double: use
        # 15 when they do, 17 (always exact) when not.
        "float": ("json(CASE WHEN CAST(printf('%!.15g', p.param_value) AS REAL) = p.param_value "
                  "THEN printf('%!.15g', p.param_value) "
                  "ELSE printf('%!.17g', p.param_value) END)"),
        "object": "json_group_object",
    },
    "postgresql": {
        "state": "lower(CAST(t.state AS TEXT))",
        "duration": "EXTRACT(EPOCH FROM (t.datetime_complete - t.datetime_start))",
        "choice": "(CAST(p.distribution_json AS JSON) -> 'attributes' -> 'choices' -> {path})",
        "path": "CAST(p.param_value AS INTEGER)",
        "kind": "(CAST(p.distribution_json AS JSON) ->> 'name')",
        "int": "to_json(CAST(p.param_value AS BIGINT))",
        "float": "to_json(p.param_value)",
        "object": "json_object_agg",
    },
}

_TRIAL_SUMMARY = """
SELECT s.study_name AS study,
       t.study_id AS study_id,
       t.trial_id AS trial_id,
       t.number AS number,
       {state} AS state,
       v.value AS value,
       t.datetime_start AS datetime_start,
       t.datetime_complete AS datetime_complete,
       {duration} AS duration,
       i.best_epoch AS best_epoch,
       i.epochs_run AS epochs_run,
       i.seed AS seed,
       i.outcome AS outcome,
       i.test_metric AS test_metric,
       (SELECT {object}(p.param_name,
                        CASE {kind}
                            WHEN 'CategoricalDistribution' THEN {choice}
                            WHEN 'IntDistribution' THEN {int}
                            ELSE {float} END)
        FROM trial_params p WHERE p.trial_id = t.trial_id) AS params
FROM trials t
JOIN studies s ON s.study_id = t.study_id
LEFT JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0
LEFT JOIN tuner_trials i ON i.trial_id = t.trial_id
"""

_EPOCH_SUMMARY = """
SELECT s.study_name AS study,
       t.study_id AS study_id,
       t.number AS number,
       e.trial_id AS trial_id,
       e.epoch AS epoch,
       e.train_loss AS train_loss,
       e.val_loss AS val_loss,
       e.val_metric AS val_metric,
       e.lr AS lr,
       e.seconds AS seconds
FROM tuner_epochs e
JOIN trials t ON t.trial_id = e.trial_id
JOIN studies s ON s.study_id = t.study_id
"""

VIEWS = ("trial_summary", "epoch_summary")


def view_sql(dialect: str) -> dict[str, str]:
    """The SELECT behind each view, for ``dialect`` (``sqlite`` or ``postgresql``)."""
    parts = dict(_DIALECT[dialect])
    parts["choice"] = parts["choice"].format(path=parts.pop("path"))
    return {"trial_summary": _TRIAL_SUMMARY.format(**parts), "epoch_summary": _EPOCH_SUMMARY}
