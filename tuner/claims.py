"""Claiming a trial slot under the study's budget, atomically across workers.

``--trials`` is the study's total. A worker may start a trial only while
``finished + running < budget``; checking that and creating the RUNNING trial must be
one atomic step, or two workers that both see 99 of 100 would both start one. The
lock is a PostgreSQL advisory lock (any number of machines) or, for SQLite (one
machine), an exclusive ``flock`` on a file next to the database.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import make_url, text

from tuner.errors import StorageError
from tuner.storage import TunerStorage

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per study there
    fcntl = None  # type: ignore[assignment]

# The first key of PostgreSQL's two-key advisory locks: "tunr" in ASCII.
_LOCK_CLASS = 0x74756E72
_local = threading.Lock()


@contextmanager
def budget_lock(storage: TunerStorage, study_id: int) -> Iterator[None]:
    """Hold the study's claim lock for the duration of the block."""
    dialect = storage.engine.dialect.name
    if dialect == "postgresql":
        with storage.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:c, :s)"), {"c": _LOCK_CLASS, "s": study_id})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:c, :s)"),
                             {"c": _LOCK_CLASS, "s": study_id})
                conn.commit()
        return
    database = make_url(storage.url).database
    if dialect == "sqlite" and database not in (None, "", ":memory:") and fcntl is not None:
        lock_path = Path(f"{database}.lock")
        try:
            handle = open(lock_path, "a")  # noqa: SIM115 (closed by the `with` below)
        except OSError as exc:
            raise StorageError(f"cannot open the lock file {lock_path} next to the study "
                               f"database: {exc.strerror}; it must be writable by whoever "
                               "runs trials on this database") from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    with _local:  # an in-memory database lives in one process
        yield
