"""Claiming a trial slot under the study's budget, atomically across workers.

``--trials`` is the study's total. A worker may start a trial only while
``finished + running < budget``; checking that and creating the RUNNING trial must be
one atomic step, or two workers that both see 99 of 100 would both start one. The
lock is a PostgreSQL advisory lock (any number of machines) or, for SQLite (one
machine), an exclusive ``flock`` on a file next to the database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tuner.storage import TunerStorage


@contextmanager
def budget_lock(storage: TunerStorage, study_id: int) -> Iterator[None]:
    """Hold the study's claim lock for the duration of the block."""
    with storage.lock(study_id):
        yield
