"""One lock per key across every process that opens a study database.

A PostgreSQL advisory lock (any number of machines), or, for SQLite (one machine), an
exclusive ``flock`` on the file next to the database, ``<database>.lock``; an
in-memory database lives in one process, where a thread lock serves. The budget's
claims hold it per study (:mod:`tuner.run.claims`), schema changes under a key of their own
(:mod:`tuner.storage._schema`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import make_url, text
from sqlalchemy.engine import Engine

from tuner.errors import StorageError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per database there
    fcntl = None  # type: ignore[assignment]

# The first key of PostgreSQL's two-key advisory locks: "tunr" in ASCII.
LOCK_CLASS = 0x74756E72
_local = threading.Lock()


@contextmanager
def database_lock(engine: Engine, url: str, key: int) -> Iterator[None]:
    """Hold the lock ``key`` of the database at ``url`` for the duration of the block."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:c, :s)"), {"c": LOCK_CLASS, "s": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:c, :s)"),
                             {"c": LOCK_CLASS, "s": key})
                conn.commit()
        return
    database = make_url(url).database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:") or fcntl is None:
        with _local:
            yield
        return
    lock = Path(f"{database}.lock")
    try:
        handle = open(lock, "a")  # noqa: SIM115 (closed by the `with` below)
    except OSError as exc:
        raise StorageError(f"cannot open the lock file {lock} next to the study database: "
                           f"{exc.strerror}; it must be writable by whoever runs trials on "
                           "this database") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
