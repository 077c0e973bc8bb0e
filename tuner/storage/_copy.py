"""Copying a study to another database (or under another name), the tuner's rows with it.

Optuna's ``copy_study`` copies the study: its directions, its attributes (the tuner's
stored space and budget among them) and its trials, each created anew in the destination
with the same number and a new id. The tuner's rows are keyed by those ids
(``tuner_trials``, ``tuner_epochs``, ``tuner_epoch_metrics``, ``tuner_models``) or by the
study's id and a trial's number (``tuner_checkpoints``): they are copied with the ids
mapped through the trials' numbers, in one transaction of the destination. When anything
fails after the study was created there, it is deleted again: no half-copied study stays.

>>> source = TunerStorage("sqlite:///storage/tuner.db", create=False).open()  # doctest: +SKIP
>>> copy_study(source, TunerStorage("postgresql://me@dbhost/tuner"), "reg")  # doctest: +SKIP
CopiedStudy(name='reg', new_name='reg', trials=200, rows={'tuner_trials': 200, ...})
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy import Connection, Table, func, inspect, select
from sqlalchemy.exc import SQLAlchemyError

from tuner.errors import StorageError, StudyNotFoundError, UsageError
from tuner.formatting import plural
from tuner.storage._store import (
    DATABASE_ERRORS,
    GRACE_PERIOD,
    TunerStorage,
    _first_line,
    display_url,
)
from tuner.storage._tables import checkpoints, epoch_metrics, epochs, models, trial_info
from tuner.storage.optuna_compat import TrialModel

# The tuner's tables keyed by Optuna's trial id; checkpoints are keyed by the study's id.
TRIAL_TABLES = (trial_info, epochs, epoch_metrics, models)
BATCH = 500  # rows per INSERT (a model's weights are a row)


@dataclass(frozen=True)
class CopiedStudy:
    """What :func:`copy_study` copied."""

    name: str
    new_name: str
    trials: int
    rows: dict[str, int]  # the tuner's rows copied, by table


def copy_study(source: TunerStorage, destination: TunerStorage, name: str,
               new_name: str | None = None) -> CopiedStudy:
    """Copy study ``name`` of the opened ``source`` into ``destination`` (not opened yet:
    it is opened, and created where missing, once the source's checks pass) as
    ``new_name`` (default: the same name), with the tuner's rows of its trials.

    Refused, before anything is written, when the study has RUNNING trials (their copies
    would hold slots of the budget with no worker and no heartbeat behind them) or the
    destination already has a study of that name.
    """
    with _database_errors(source, destination):
        return _copy(source, destination, name, new_name or name)


def _copy(source: TunerStorage, destination: TunerStorage, name: str,
          new_name: str) -> CopiedStudy:
    study_id = _study_id(source, name)
    running = _running(source, study_id)
    if running:
        raise UsageError(f"study {name!r} has {plural(running, 'running trial')}; copy it "
                         "once its workers have stopped (a dead worker's trials stay running "
                         "until a worker of the study finds them stale, "
                         f"{GRACE_PERIOD} s after their last heartbeat)")
    destination.open()
    if new_name in destination.study_names():
        raise UsageError(f"{display_url(destination.url)} already has a study {new_name!r}; "
                         "copy it under another name with --as NEW, or delete that one first "
                         "(optuna delete-study)")
    try:
        optuna.copy_study(from_study_name=name, from_storage=source.optuna,
                          to_storage=destination.optuna, to_study_name=new_name)
        new_id = destination.optuna.get_study_id_from_name(new_name)
        ids = _id_map(source, study_id, destination, new_id)
        rows = _copy_rows(source, destination, study_id, new_id, ids)
    except optuna.exceptions.DuplicatedStudyError:  # created there meanwhile: not ours
        raise UsageError(f"{display_url(destination.url)} already has a study "
                         f"{new_name!r}") from None
    except BaseException:
        _delete(destination, new_name)
        raise
    return CopiedStudy(name, new_name, len(ids), rows)


@contextlib.contextmanager
def _database_errors(source: TunerStorage, destination: TunerStorage) -> Iterator[None]:
    """Optuna's and SQLAlchemy's errors as one line naming both databases."""
    try:
        yield
    except (optuna.exceptions.StorageInternalError, SQLAlchemyError) as exc:
        raise StorageError(f"database error copying from {display_url(source.url)} to "
                           f"{display_url(destination.url)}: {_first_line(exc)}") from None


def _study_id(storage: TunerStorage, name: str) -> int:
    try:
        return storage.optuna.get_study_id_from_name(name)
    except KeyError:
        names = storage.study_names()
        known = f"studies there: {', '.join(names)}" if names else "it has no studies"
        raise StudyNotFoundError(f"no study {name!r} in {display_url(storage.url)}; "
                                 f"{known}") from None


def _running(storage: TunerStorage, study_id: int) -> int:
    with storage.session() as conn:
        return int(conn.execute(select(func.count()).select_from(TrialModel.__table__).where(
            TrialModel.study_id == study_id, TrialModel.state == TrialState.RUNNING)).scalar()
                   or 0)


def _numbers(storage: TunerStorage, study_id: int) -> dict[int, int]:
    """The study's trials: number -> trial id."""
    with storage.session() as conn:
        return dict(conn.execute(select(TrialModel.number, TrialModel.trial_id)
                                 .where(TrialModel.study_id == study_id)).all())


def _id_map(source: TunerStorage, study_id: int, destination: TunerStorage,
            new_id: int) -> dict[int, int]:
    """Source trial id -> destination trial id, through the trials' numbers."""
    before, after = _numbers(source, study_id), _numbers(destination, new_id)
    if set(before) != set(after):
        raise StorageError(f"the copy of the study has trials {sorted(set(after))[:5]}..., "
                           f"not the source's {sorted(set(before))[:5]}...")
    return {before[number]: after[number] for number in before}


def _copy_rows(source: TunerStorage, destination: TunerStorage, study_id: int, new_id: int,
               ids: Mapping[int, int]) -> dict[str, int]:
    """The tuner's rows of the study's trials, ids mapped, in one destination transaction."""
    present = set(inspect(source.engine).get_table_names())
    copied = dict.fromkeys((t.name for t in (*TRIAL_TABLES, checkpoints)), 0)
    with destination.session() as out:
        # Rows a deleted study left behind (Optuna's delete-study leaves the tuner's):
        # SQLite reuses the ids of the rows deleted last, so they may be the new ones.
        for table in TRIAL_TABLES:
            out.execute(table.delete().where(table.c.trial_id.in_(list(ids.values()))))
        out.execute(checkpoints.delete().where(checkpoints.c.study_id == new_id))
        for table in (*TRIAL_TABLES, checkpoints):
            if table.name not in present:  # an older or plain Optuna database
                continue
            for batch in _read(source, table, study_id):
                rows = [_mapped(table, row, new_id, ids) for row in batch]
                out.execute(table.insert(), rows)
                copied[table.name] += len(rows)
    return copied


def _read(storage: TunerStorage, table: Table, study_id: int) -> Iterator[list[dict[str, Any]]]:
    """The study's rows of ``table``, ``BATCH`` at a time."""
    if table is checkpoints:
        query = select(table).where(table.c.study_id == study_id)
    else:
        trials = select(TrialModel.trial_id).where(TrialModel.study_id == study_id)
        query = select(table).where(table.c.trial_id.in_(trials))
    with storage.session() as conn:
        yield from _batches(conn, query)


def _batches(conn: Connection, query: Any) -> Iterator[list[dict[str, Any]]]:
    result = conn.execution_options(stream_results=True).execute(query)
    for part in result.mappings().partitions(BATCH):
        yield [dict(row) for row in part]


def _mapped(table: Table, row: dict[str, Any], new_id: int,
            ids: Mapping[int, int]) -> dict[str, Any]:
    if "trial_id" in row:
        row["trial_id"] = ids[row["trial_id"]]
    if "study_id" in row:
        row["study_id"] = new_id
    return row


def _delete(storage: TunerStorage, name: str) -> None:
    """Delete the half-copied study, if it was created; an error doing so changes
    nothing of what is raised."""
    with contextlib.suppress(KeyError, *DATABASE_ERRORS):
        optuna.delete_study(study_name=name, storage=storage.optuna)
