"""Opening the study database: Optuna's RDB storage plus the tuner's tables.

All SQL the tuner writes goes through :meth:`TunerStorage.session`, the one context
manager that commits, rolls back, closes, and turns SQLAlchemy errors into
:class:`~tuner.errors.StorageError`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import Trial, TrialState
from sqlalchemy import (
    Connection,
    bindparam,
    create_engine,
    event,
    inspect,
    make_url,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    InterfaceError,
    InternalError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from tuner.catalogue import DEFAULT_STORAGE
from tuner.errors import StorageError, StorageUnavailable, StudyNotFoundError, UsageError
from tuner.storage._fast import TRIAL_STATE, StudyStorage, TunerRDBStorage
from tuner.storage._lock import database_lock
from tuner.storage._schema import drop_views, ensure_schema
from tuner.storage._tables import (
    checkpoints,
    epoch_metrics,
    epochs,
    models,
    trial_info,
)
from tuner.storage.optuna_compat import (
    TrialIntermediateValueModel,
    TrialModel,
    TrialUserAttributeModel,
    schema_head,
    trial_id_of,
)
from tuner.storage.retries import RetryStale

# The most database connections one worker process holds at once (trials, heartbeat).
CONNECTIONS_PER_WORKER = 3
# What a dropped or busy database looks like from the tuner, to wait out and retry:
# SQLAlchemy's errors of the connection (not of the data, such as a violated constraint),
# Optuna's wrapping of them, and the tuner's own session's (StorageUnavailable).
DATABASE_ERRORS = (optuna.exceptions.StorageInternalError, StorageUnavailable,
                   OperationalError, InterfaceError, InternalError, PoolTimeout)
# Seconds between a running trial's heartbeats, and the silence after which a RUNNING
# trial is taken to belong to a dead worker (failed, then retried). Tests shorten them.
HEARTBEAT_INTERVAL = int(os.environ.get("TUNER_HEARTBEAT_INTERVAL", "5"))
GRACE_PERIOD = int(os.environ.get("TUNER_GRACE_PERIOD", "20"))


def display_url(url: str) -> str:
    """The URL with any password masked, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _prepare_sqlite(path: Path, create: bool) -> None:
    """Check the file can be written, and switch it to write-ahead logging.

    WAL lets readers (the dashboard, query commands) work while a worker writes.
    The mode is stored in the file, so setting it once serves every connection.
    """
    if not path.exists():
        if not create:
            raise StorageError(f"no study database at {path}; run `tuner start` first, "
                               "or pass --storage")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the directory {path.parent}: "
                               f"{exc.strerror}") from None
    target = path if path.exists() else path.parent
    if not os.access(target, os.W_OK):
        raise StorageError(f"the study database {path} is not writable "
                           f"({target} does not allow writing)")
    try:
        with sqlite3.connect(path, timeout=30) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open the study database {path}: {exc}") from None


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # WAL makes NORMAL durable against application crashes; FULL would fsync every commit.
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


# Optuna's tables a study database must have to be read; `version_info` and
# `alembic_version` too, or opening it through Optuna would write them.
OPTUNA_TABLES = ("studies", "study_directions", "trials", "trial_params", "trial_values",
                 "trial_intermediate_values", "version_info", "alembic_version")
TUNER_TABLES = (epochs.name, trial_info.name)


def _check_schema(url: str, engine_kwargs: dict[str, Any],
                  complete: bool = True) -> tuple[bool, bool]:
    """Check, without writing anything, that ``url`` holds an Optuna study database.

    Returns whether the tuner's own tables are there too (a plain Optuna database
    has none: its trials simply have no best epoch, seed or per-epoch rows), and whether
    Optuna's schema is known to be current: its version row is there, and its revision is
    the one the installed Optuna reads (:func:`~tuner.storage.optuna_compat.schema_head`).
    When it is not known to be, Optuna checks it as it opens the storage (and writes the
    version rows a database lacks), as it always has.
    """
    engine = create_engine(url, **engine_kwargs)
    try:
        names = set(inspect(engine).get_table_names())
        current = False
        head = schema_head()
        if complete and head is not None and {"version_info", "alembic_version"} <= names:
            with engine.connect() as conn:
                revisions = [row[0] for row in conn.execute(_REVISIONS)]
                version_rows = conn.execute(_VERSION_ROWS).scalar()
            current = revisions == [head] and version_rows == 1
    finally:
        engine.dispose()
    if "studies" not in names or "trials" not in names:
        raise StorageError(f"{display_url(url)} is not an Optuna study database (it has no "
                           "`studies` and `trials` tables); check --storage")
    missing = [t for t in (OPTUNA_TABLES if complete else ())
               if t not in names]
    if missing:
        raise StorageError(f"{display_url(url)} is not a complete Optuna study database "
                           f"(missing tables: {', '.join(missing)}); if an older Optuna "
                           f"created it, run `tuner upgrade --storage {display_url(url)}`")
    return all(t in names for t in TUNER_TABLES), current


# Optuna's schema revision (alembic's table) and its version row, as Optuna reads them.
_REVISIONS = text("SELECT version_num FROM alembic_version")
_VERSION_ROWS = text("SELECT COUNT(*) FROM version_info")


def _open_optuna(url: str, engine_kwargs: dict[str, Any], create: bool,
                 heartbeat: dict[str, Any]) -> TunerRDBStorage:
    """Optuna's storage on ``url``. Opening one writes Optuna's schema rows
    (``version_info``, ``alembic_version``) where they are missing, so two processes
    opening a new database at once (a worker creating it, a reader or a second worker)
    can both try to: the loser's insert violates a unique key, and by then the rows are
    there, so it opens again."""
    def attempt() -> TunerRDBStorage:
        return TunerRDBStorage(url, engine_kwargs=engine_kwargs,
                               skip_table_creation=not create, **heartbeat)

    for tries in range(1, _OPEN_TRIES):
        try:
            return attempt()
        except IntegrityError:
            time.sleep(0.05 * tries)
    return attempt()


_OPEN_TRIES = 4


class TunerStorage:
    """A study database: Optuna's storage and the tuner's tables on one engine.

    With ``create=True`` (workers) the database, Optuna's schema, the tuner's tables and
    its views are created as needed. With ``create=False`` (read-back commands, the
    dashboard) nothing is written: the database must already hold Optuna's schema, and
    the tuner's tables may be missing (a plain Optuna database), see :attr:`tuner_tables`.

    >>> storage = TunerStorage("sqlite:///:memory:").open()
    >>> storage.study_names()
    []
    """

    def __init__(self, url: str = DEFAULT_STORAGE, *, create: bool = True,
                 heartbeat: bool = True, heartbeat_interval: int = HEARTBEAT_INTERVAL,
                 grace_period: int = GRACE_PERIOD) -> None:
        self.url = url
        self.create = create
        self.heartbeat = heartbeat
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self._optuna: TunerRDBStorage | None = None
        self._studies: StudyStorage | None = None
        # Whether the tuner's tables exist (always, once a creating open() has run).
        self.tuner_tables = create

    def open(self) -> TunerStorage:
        engine_kwargs = self._connect_options()
        path = _sqlite_path(self.url)
        if path is not None and self.create:
            _prepare_sqlite(path, self.create)
        elif path is not None and not path.exists():
            raise StorageError(f"no study database at {path}; run `tuner start` first, "
                               "or pass --storage")
        heartbeat = dict(
            heartbeat_interval=self.heartbeat_interval,
            grace_period=self.grace_period,
            heartbeat_stale_trial_callback=RetryStale(),
        ) if self.heartbeat else {}
        try:
            current = False
            if not self.create:
                self.tuner_tables, current = _check_schema(self.url, engine_kwargs)
            if current and not heartbeat:  # nothing for Optuna to check or write
                self._optuna = TunerRDBStorage(self.url, engine_kwargs, schema_checked=True)
            else:
                self._optuna = _open_optuna(self.url, engine_kwargs, self.create, heartbeat)
            if self.create:
                if path is not None:
                    event.listen(self.engine, "connect", _on_sqlite_connect)
                    # Optuna's set-up left connections in the pool, opened before the
                    # listener: without this they would fsync every commit.
                    self.engine.dispose()
                ensure_schema(self.engine, self.url)
        except (SQLAlchemyError, ModuleNotFoundError, ValueError, RuntimeError) as exc:
            if "optuna storage upgrade" in str(exc):
                raise StorageError(
                    f"the study database {display_url(self.url)} has an older Optuna schema "
                    f"than Optuna {optuna.__version__} reads: run `tuner upgrade --storage "
                    f"{display_url(self.url)}` (it upgrades Optuna's schema and keeps the "
                    "tuner's tables and views)") from None
            raise StorageError(f"cannot open the study database {display_url(self.url)}: "
                               f"{_first_line(exc)}") from None
        return self

    def _connect_options(self) -> dict[str, Any]:
        """Normalize :attr:`url` (PostgreSQL through psycopg 3) and the engine's options."""
        try:
            parsed = make_url(self.url)
        except ArgumentError:
            raise UsageError(f"--storage: not a database URL: {self.url!r} (expected e.g. "
                             f"{DEFAULT_STORAGE} or postgresql://user@host/db)") from None
        engine_kwargs: dict[str, Any] = {}
        if parsed.drivername.startswith("sqlite"):
            engine_kwargs["connect_args"] = {"timeout": 60}
        elif parsed.drivername.split("+")[0] in ("postgresql", "postgres"):
            if parsed.drivername in ("postgresql", "postgres"):  # `postgres`: Heroku's alias
                self.url = parsed.set(drivername="postgresql+psycopg").render_as_string(
                    hide_password=False)
            engine_kwargs["connect_args"] = {"connect_timeout": 10}
            engine_kwargs["pool_pre_ping"] = True
        return engine_kwargs

    def upgrade(self) -> tuple[str, str]:
        """Bring an existing database up to the installed Optuna's schema and the tuner's:
        the views are dropped, Optuna's migration runs (its own code, as ``optuna storage
        upgrade`` runs it), then the tuner's tables, ties and views are brought up to
        date. Returns Optuna's schema revision before and after."""
        engine_kwargs = self._connect_options()
        path = _sqlite_path(self.url)
        if path is not None and not path.exists():
            raise StorageError(f"no study database at {path}; check --storage")
        try:
            _check_schema(self.url, engine_kwargs, complete=False)  # older: fewer tables
            engine = create_engine(self.url, **engine_kwargs)
            try:
                with engine.begin() as conn:
                    drop_views(conn)
            finally:
                engine.dispose()
            rdb = optuna.storages.RDBStorage(self.url, engine_kwargs=engine_kwargs,
                                             skip_compatibility_check=True,
                                             skip_table_creation=True)
            before, head = rdb.get_current_version(), rdb.get_head_version()
            if before != head:
                rdb.upgrade()
            rdb.engine.dispose()
        except (SQLAlchemyError, ModuleNotFoundError, ValueError, RuntimeError) as exc:
            raise StorageError(f"cannot upgrade the study database {display_url(self.url)}: "
                               f"{_first_line(exc)} (the tuner's views are recreated by the "
                               "next `tuner upgrade` or `tuner start`)") from None
        self.create = True
        self.open()
        return before, head

    @property
    def optuna(self) -> TunerRDBStorage:
        if self._optuna is None:
            raise RuntimeError("TunerStorage.open() must be called first")
        return self._optuna

    @property
    def studies(self) -> StudyStorage:
        """The storage to create and load studies on: Optuna's cache over :attr:`optuna`,
        with fewer round trips per trial (:mod:`tuner.storage._fast`)."""
        if self._studies is None:
            self._studies = StudyStorage(self.optuna)
        return self._studies

    @property
    def engine(self) -> Engine:
        return self.optuna.engine

    @contextmanager
    def session(self) -> Iterator[Connection]:
        """A transaction: commits on success, rolls back on error, always closes."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except (OperationalError, InterfaceError, InternalError, PoolTimeout) as exc:
            raise StorageUnavailable(f"database error on {display_url(self.url)}: "
                                     f"{_first_line(exc)}") from None
        except SQLAlchemyError as exc:  # the data, not the connection: retrying cannot help
            raise StorageError(f"database error on {display_url(self.url)}: "
                               f"{_first_line(exc)}") from None

    @contextmanager
    def lock(self, key: int) -> Iterator[None]:
        """Hold the database's lock ``key`` across every process that opens it, for the
        duration of the block (:func:`~tuner.storage.database_lock`; the budget's claims
        take it per study id)."""
        with database_lock(self.engine, self.url, key):
            yield

    def study_names(self) -> list[str]:
        return [s.study_name for s in self.optuna.get_all_studies()]

    def study_id(self, name: str) -> int:
        """The id of the study ``name``, or a StudyNotFoundError that lists the studies
        there are."""
        try:
            return self.optuna.get_study_id_from_name(name)
        except KeyError:
            names = self.study_names()
            known = (f"studies here: {', '.join(names)}" if names
                     else "this database has no studies")
            raise StudyNotFoundError(f"no study {name!r} in the storage; {known}") from None

    def state_counts(self, study_id: int) -> dict[TrialState, int]:
        """Trials per state of the study ``study_id`` (every state, 0 where none), counted
        in SQL: no trial is loaded into Python."""
        counts = dict.fromkeys(TrialState, 0)
        with self.session() as conn:
            for state, n in conn.execute(_STATE_COUNTS, {"sid": study_id}):
                counts[TrialState[state]] = n
        return counts

    def check_connections(self, workers: int) -> None:
        """Refuse ``workers`` processes the database cannot serve: on PostgreSQL, each
        holds up to :data:`CONNECTIONS_PER_WORKER` connections (its trials, its
        heartbeat), against the server's ``max_connections`` less those in use."""
        if self.engine.dialect.name != "postgresql":
            return
        with self.session() as conn:
            limit = int(conn.execute(text("SHOW max_connections")).scalar_one())
            used = int(conn.execute(text("SELECT COUNT(*) FROM pg_stat_activity")).scalar_one())
        needed = workers * CONNECTIONS_PER_WORKER
        if needed > limit - used:
            raise UsageError(
                f"--workers {workers}: they would need up to {needed} connections to "
                f"{display_url(self.url)}, which allows {limit} and has {used} in use; use "
                f"at most {max(1, (limit - used) // CONNECTIONS_PER_WORKER)} workers, or raise "
                "the server's max_connections")

    def delete_study(self, study_id: int) -> None:
        """Delete a study, its trials and every row of the tuner's that belongs to them,
        in one transaction (Optuna's deletion, whose rows the schema's ties follow)."""
        try:
            if self.tuner_tables:
                ensure_schema(self.engine, self.url)  # the ties, on a database from before
            self.optuna.delete_study(study_id)
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot delete the study from {display_url(self.url)}: "
                               f"{_first_line(exc)}") from None

    def write_trial(self, trial: Trial, values: Sequence[tuple[int, float]] = (),
                    user_attrs: Mapping[str, Any] | None = None) -> None:
        """Add intermediate values ``(epoch, value)`` and user attributes to a running
        Optuna trial, in one transaction.

        Optuna's ``trial.report`` and ``trial.set_user_attr`` cost a transaction each,
        more than a small model's epoch on SQLite. This writes the same rows of Optuna's
        tables (through Optuna's own table definitions), after the same check: a trial
        that has finished (e.g. failed by another worker as stale) is not updated.
        """
        if values or user_attrs:
            with self.session() as conn:
                _write_optuna_rows(conn, trial, values, user_attrs or {})

    def write_values(self, values: Mapping[int, tuple[int, float]]) -> set[int]:
        """One intermediate value ``(epoch, value)`` for each of several running trials
        (by trial id), in one transaction: a fused population's epoch. Returns the ids of
        the trials that had finished (failed as stale elsewhere), which are not written."""
        if not values:
            return set()
        with self.session() as conn:
            finished = _finished_ids(conn, list(values))
            rows = [row for trial_id, value in values.items() if trial_id not in finished
                    for row in _value_rows(trial_id, [value])]
            if rows:
                conn.execute(TrialIntermediateValueModel.__table__.insert(), rows)
        return finished

    def record_trial(self, *, trial_id: int, study_id: int, seed: int, best_epoch: int | None,
                     outcome: str, device: str, history: Sequence[Any],
                     trial: Trial | None = None, values: Sequence[tuple[int, float]] = (),
                     user_attrs: Mapping[str, Any] | None = None) -> None:
        """One transaction per trial: its per-epoch rows and its summary row, and, with
        ``trial``, what :meth:`write_trial` would still write for it."""
        rows = _epoch_rows(trial_id, history)
        extra = _extra_rows(trial_id, history)
        with self.session() as conn:
            if trial is not None and (values or user_attrs):
                _write_optuna_rows(conn, trial, values, user_attrs or {})
            if rows:
                conn.execute(epochs.insert(), rows)
            if extra:
                conn.execute(epoch_metrics.insert(), extra)
            conn.execute(trial_info.insert(), _info_row(trial_id, study_id, seed, best_epoch,
                                                        outcome, device, len(rows)))

    def record_trials(self, entries: Sequence[Mapping[str, Any]]) -> set[int]:
        """:meth:`record_trial` for several running trials (each entry its keyword
        arguments, ``trial`` included), in one transaction with one statement per table:
        the members a fused population finishes at one epoch. Returns the ids of the
        trials that had finished (failed as stale elsewhere), which are not written."""
        if not entries:
            return set()
        user = TrialUserAttributeModel.__table__
        with self.session() as conn:
            finished = _finished_ids(conn, [e["trial_id"] for e in entries])
            live = [e for e in entries if e["trial_id"] not in finished]
            values = [row for e in live for row in _value_rows(e["trial_id"], e["values"])]
            attrs = [(e["trial_id"], key, v) for e in live
                     for key, v in (e["user_attrs"] or {}).items()]
            rows = [row for e in live for row in _epoch_rows(e["trial_id"], e["history"])]
            extra = [row for e in live for row in _extra_rows(e["trial_id"], e["history"])]
            if values:
                conn.execute(TrialIntermediateValueModel.__table__.insert(), values)
            if attrs:
                conn.execute(user.delete().where((user.c.trial_id == bindparam("t_id"))
                                                 & (user.c.key == bindparam("t_key"))),
                             [{"t_id": t, "t_key": key} for t, key, _ in attrs])
                conn.execute(user.insert(), [dict(trial_id=t, key=key, value_json=json.dumps(v))
                                             for t, key, v in attrs])
            if rows:
                conn.execute(epochs.insert(), rows)
            if extra:
                conn.execute(epoch_metrics.insert(), extra)
            if live:
                conn.execute(trial_info.insert(), [
                    _info_row(e["trial_id"], e["study_id"], e["seed"], e["best_epoch"],
                              e["outcome"], e["device"], len(e["history"])) for e in live])
        return finished

    def save_checkpoint(self, study_id: int, number: int, epoch: int, state: bytes) -> None:
        key = (checkpoints.c.study_id == study_id) & (checkpoints.c.number == number)
        with self.session() as conn:
            conn.execute(checkpoints.delete().where(key))
            conn.execute(checkpoints.insert(), dict(study_id=study_id, number=number,
                                                    epoch=epoch, state=state))

    def load_checkpoint(self, study_id: int, number: int) -> bytes | None:
        key = (checkpoints.c.study_id == study_id) & (checkpoints.c.number == number)
        with self.session() as conn:
            return conn.execute(checkpoints.select().with_only_columns(checkpoints.c.state)
                                .where(key)).scalar()

    def delete_checkpoint(self, study_id: int, number: int) -> None:
        key = (checkpoints.c.study_id == study_id) & (checkpoints.c.number == number)
        with self.session() as conn:
            conn.execute(checkpoints.delete().where(key))

    def set_test_metric(self, trial_id: int, value: float) -> None:
        with self.session() as conn:
            conn.execute(trial_info.update().where(trial_info.c.trial_id == trial_id)
                         .values(test_metric=value))

    def test_metric(self, trial_id: int) -> float | None:
        """The test metric :meth:`set_test_metric` recorded for ``trial_id``, or None."""
        with self.session() as conn:
            return conn.execute(trial_info.select().with_only_columns(trial_info.c.test_metric)
                                .where(trial_info.c.trial_id == trial_id)).scalar()

    def best_epoch_and_test_metric(self, trial_id: int) -> tuple[int | None, float | None]:
        """The trial's best epoch and test metric from its ``tuner_trials`` row, (None, None)
        without one."""
        with self.session() as conn:
            row = conn.execute(trial_info.select()
                               .with_only_columns(trial_info.c.best_epoch,
                                                  trial_info.c.test_metric)
                               .where(trial_info.c.trial_id == trial_id)).first()
        return (None, None) if row is None else (row[0], row[1])

    def recorded_curve(self, trial_id: int) -> tuple[list[float | None], str | None]:
        """What the trial recorded of its training, in one transaction: its validation
        metric per epoch (in epoch order; None where it was not finite) and the device it
        trained on (None without a ``tuner_trials`` row)."""
        with self.session() as conn:
            curve = [row[0] for row in conn.execute(
                select(epochs.c.val_metric).where(epochs.c.trial_id == trial_id)
                .order_by(epochs.c.epoch))]
            device = conn.execute(select(trial_info.c.device)
                                  .where(trial_info.c.trial_id == trial_id)).scalar()
        return curve, device

    def save_model(self, trial_id: int, blob: bytes) -> None:
        with self.session() as conn:
            conn.execute(models.delete().where(models.c.trial_id == trial_id))
            conn.execute(models.insert(), dict(trial_id=trial_id, state=blob))

    def load_model_blob(self, trial_id: int) -> bytes | None:
        """The weights stored for ``trial_id``, or None (also on a database from before
        the table existed)."""
        if not self.tuner_tables or not inspect(self.engine).has_table(models.name):
            return None
        with self.session() as conn:
            return conn.execute(models.select().with_only_columns(models.c.state)
                                .where(models.c.trial_id == trial_id)).scalar()


def close_connections(storage: TunerStorage | optuna.storages.RDBStorage) -> None:
    """Close the connections the storage's pool holds (it opens new ones if used again):
    before opening the same database otherwise, and when done with it."""
    storage.engine.dispose()


# Text SQL: the state comes back as its stored name (TrialState[name]) on every database.
_STATE_COUNTS = text("SELECT state, COUNT(*) FROM trials WHERE study_id = :sid GROUP BY state")


def _finished_ids(conn: Connection, ids: Sequence[int]) -> set[int]:
    """Those of the trials ``ids`` that have finished (or are gone): not to be written."""
    states = dict(conn.execute(select(TrialModel.trial_id, TrialModel.state)
                               .where(TrialModel.trial_id.in_(list(ids)))).all())
    return {t for t in ids if states.get(t) is None or states[t].is_finished()}


def _epoch_rows(trial_id: int, history: Sequence[Any]) -> list[dict[str, Any]]:
    """Rows of ``tuner_epochs`` for a trial's :class:`~tuner.train.loop.EpochMetrics`."""
    return [dict(trial_id=trial_id, epoch=m.epoch, train_loss=_finite(m.train_loss),
                 val_loss=_finite(m.val_loss), val_metric=_finite(m.val_metric),
                 lr=_finite(m.lr), seconds=m.seconds) for m in history]


def _extra_rows(trial_id: int, history: Sequence[Any]) -> list[dict[str, Any]]:
    """Rows of ``tuner_epoch_metrics``: the further values of each epoch, by name."""
    return [dict(trial_id=trial_id, epoch=m.epoch, name=name, value=_finite(value))
            for m in history for name, value in getattr(m, "extra", ())]


def _info_row(trial_id: int, study_id: int, seed: int, best_epoch: int | None, outcome: str,
              device: str, epochs_run: int) -> dict[str, Any]:
    """The trial's ``tuner_trials`` row."""
    return dict(trial_id=trial_id, study_id=study_id, seed=seed, best_epoch=best_epoch,
                epochs_run=epochs_run, outcome=outcome, device=device)


def _value_rows(trial_id: int, values: Sequence[tuple[int, float]]) -> list[dict[str, Any]]:
    """Rows of Optuna's ``trial_intermediate_values`` for ``(epoch, value)`` pairs."""
    stored = TrialIntermediateValueModel.intermediate_value_to_stored_repr
    return [dict(zip(("intermediate_value", "intermediate_value_type"),
                     stored(float(value)), strict=True), trial_id=trial_id, step=int(epoch))
            for epoch, value in values]


def _write_optuna_rows(conn: Connection, trial: Trial, values: Sequence[tuple[int, float]],
                       attrs: Mapping[str, Any]) -> None:
    """Intermediate values and user attributes of a running trial, as Optuna's
    ``trial.report`` and ``trial.set_user_attr`` write them, after the same check."""
    trial_id = trial_id_of(trial)
    rows = _value_rows(trial_id, values)
    user = TrialUserAttributeModel.__table__
    state = conn.execute(TRIAL_STATE, {"trial_id": trial_id}).scalar()
    if state is None or state.is_finished():
        raise optuna.exceptions.UpdateFinishedTrialError(
            f"trial #{trial.number} has already finished and cannot be updated")
    if rows:
        conn.execute(TrialIntermediateValueModel.__table__.insert(), rows)
    if attrs:
        conn.execute(user.delete().where((user.c.trial_id == trial_id)
                                         & user.c.key.in_(list(attrs))))
        conn.execute(user.insert(), [dict(trial_id=trial_id, key=key, value_json=json.dumps(v))
                                     for key, v in attrs.items()])


def _finite(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
