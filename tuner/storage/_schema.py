"""The tuner's part of the schema: its tables' version, their ties to Optuna's rows,
the views, and Optuna's schema upgrade.

The tuner's rows belong to Optuna's trials and studies, and must never outlive them,
whoever deletes them (``tuner delete``, ``optuna delete-study``, optuna-dashboard):

* on PostgreSQL, foreign keys with ``ON DELETE CASCADE`` to ``trials`` and ``studies``;
* on SQLite, ``AFTER DELETE`` triggers on ``trials`` and ``studies``. Foreign keys would
  need ``PRAGMA foreign_keys=ON`` in every client's connection (Optuna's and sqlite3's
  have it off), and with it on, the table rebuilds of Optuna's migrations (``DROP TABLE
  trials``) would cascade into the tuner's rows; triggers fire for every client and
  never on a ``DROP TABLE``.

The schema carries a version (``tuner_schema``). Opening a database for writing brings
it up to :data:`SCHEMA_VERSION` under a lock (a PostgreSQL advisory lock, or the lock
file next to a SQLite database): orphaned rows a deletion left behind go, the ties above
are added, and the views are recreated, so a changed view definition reaches old
databases. :func:`upgrade` runs Optuna's own schema migration with the views out of the
way (they would block it: SQLite rebuilds tables the views read, and PostgreSQL cannot
alter a column a view uses), then brings the tuner's part up to date.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import Connection, inspect, select, text
from sqlalchemy.engine import Engine

from tuner.errors import StorageError
from tuner.storage._lock import database_lock
from tuner.storage._tables import (
    checkpoints,
    epoch_metrics,
    epochs,
    metadata,
    models,
    schema_version,
    trial_info,
)
from tuner.storage._views import VIEWS, view_sql

# 1: the tables, unversioned (before deletions cascaded). 2: ties to Optuna's rows.
SCHEMA_VERSION = 2

# The tuner's tables keyed by a trial, and those keyed by a study.
_BY_TRIAL = (epochs.name, epoch_metrics.name, trial_info.name, models.name)
_BY_STUDY = (checkpoints.name, trial_info.name)
_TRIGGERS = {"tuner_trial_deleted": ("trials", "trial_id", _BY_TRIAL),
             "tuner_study_deleted": ("studies", "study_id", _BY_STUDY)}
# The key of the schema's lock (the budget's claims use study ids, which are positive).
_LOCK_SCHEMA = -1


def ensure_schema(engine: Engine, url: str) -> None:
    """Create the tuner's tables and views where missing and bring the schema up to
    :data:`SCHEMA_VERSION`; cheap (one or two reads) when it already is."""
    with engine.connect() as conn:
        if _current(conn):
            return
    with database_lock(engine, url, _LOCK_SCHEMA), engine.begin() as conn:
        _migrate(conn)


def stored_version(conn: Connection) -> int | None:
    """The tuner schema's version: None without the tuner's tables, 1 for those from
    before it was versioned."""
    return _stored(conn)[0]


def _stored(conn: Connection) -> tuple[int | None, str | None]:
    """The stored version and views' digest."""
    names = set(inspect(conn).get_table_names())
    if schema_version.name in names:
        row = conn.execute(select(schema_version.c.version, schema_version.c.views)).first()
        if row is not None:
            return int(row[0]), row[1]
    return (1 if epochs.name in names else None), None


def _views_digest(dialect: str) -> str | None:
    """The SHA-256 of the views' definitions for ``dialect`` (None: it has no views)."""
    if dialect not in ("sqlite", "postgresql"):
        return None
    text_ = "\n".join(f"{name}:{body}" for name, body in sorted(view_sql(dialect).items()))
    return hashlib.sha256(text_.encode()).hexdigest()


def _current(conn: Connection) -> bool:
    """Whether nothing is to be done: the version is current and the views and the
    ties are there (Optuna's table rebuilds drop a SQLite table's triggers with it)."""
    version, views = _stored(conn)
    _refuse_newer(version)
    if version != SCHEMA_VERSION or views != _views_digest(conn.dialect.name):
        return False
    if conn.dialect.name not in ("sqlite", "postgresql"):
        return True
    inspector = inspect(conn)
    if not set(VIEWS) <= set(inspector.get_view_names()):
        return False
    if conn.dialect.name == "sqlite":
        names = set(conn.execute(text(
            "SELECT name FROM sqlite_master WHERE type = 'trigger'")).scalars())
        return set(_TRIGGERS) <= names
    return True


def _refuse_newer(version: int | None) -> None:
    if version is not None and version > SCHEMA_VERSION:
        raise StorageError(f"this study database has the tuner schema version {version}, "
                           f"newer than this tuner's {SCHEMA_VERSION}: upgrade tuner")


def _migrate(conn: Connection) -> None:
    _refuse_newer(stored_version(conn))
    metadata.create_all(conn)
    dialect = conn.dialect.name
    if dialect in ("sqlite", "postgresql"):
        drop_views(conn)
    _delete_orphans(conn)
    if dialect == "sqlite":
        for name, (table, key, targets) in _TRIGGERS.items():
            body = " ".join(f"DELETE FROM {target} WHERE {key} = OLD.{key};"
                            for target in targets)
            conn.execute(text(f"CREATE TRIGGER IF NOT EXISTS {name} AFTER DELETE ON {table} "
                              f"FOR EACH ROW BEGIN {body} END"))
    elif dialect == "postgresql":
        _add_foreign_keys(conn)
    if dialect in ("sqlite", "postgresql"):
        for name, body in view_sql(dialect).items():
            conn.execute(text(f"CREATE VIEW {name} AS {body}"))
    conn.execute(schema_version.delete())
    conn.execute(schema_version.insert(), {"version": SCHEMA_VERSION,
                                           "views": _views_digest(dialect)})


def _delete_orphans(conn: Connection) -> None:
    """Rows of trials or studies that are gone (deleted by a client the ties did not yet
    cover), and summaries whose trial id now belongs to another study's trial."""
    for table in _BY_TRIAL:
        conn.execute(text(f"DELETE FROM {table} WHERE trial_id NOT IN "
                          "(SELECT trial_id FROM trials)"))
    conn.execute(text(f"DELETE FROM {checkpoints.name} WHERE study_id NOT IN "
                      "(SELECT study_id FROM studies)"))
    conn.execute(text(f"DELETE FROM {trial_info.name} WHERE NOT EXISTS (SELECT 1 FROM trials t "
                      f"WHERE t.trial_id = {trial_info.name}.trial_id "
                      f"AND t.study_id = {trial_info.name}.study_id)"))


def _add_foreign_keys(conn: Connection) -> None:
    existing = set(conn.execute(text(
        "SELECT conname FROM pg_constraint WHERE contype = 'f'")).scalars())
    ties = [(table, "trial_id", "trials") for table in _BY_TRIAL]
    ties += [(table, "study_id", "studies") for table in _BY_STUDY]
    for table, column, parent in ties:
        name = f"{table}_{column}_cascade"
        if name not in existing:
            conn.execute(text(f"ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY "
                              f"({column}) REFERENCES {parent} ({column}) ON DELETE CASCADE"))


def drop_views(conn: Connection) -> None:
    for name in VIEWS:
        conn.execute(text(f"DROP VIEW IF EXISTS {name}"))
