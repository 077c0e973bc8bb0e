"""What a worker process of :mod:`tuner.run.pool` runs first.

A spawned process imports the module of its target, and of its arguments, before it
calls it. This module imports nothing heavy (``tuner`` itself loads Optuna, not torch,
SQLAlchemy or scikit-learn), so that :func:`worker_process` defers full garbage
collections (:mod:`tuner.run.heap`) before the worker's start-up imports the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuner.run import heap
from tuner.space import EngineSpec


@dataclass(frozen=True)
class WorkerArgs:
    storage_url: str
    study_name: str
    budget: int
    device: str
    threads: int
    timeout: float | None = None
    max_trials: int | None = None
    checkpoint_every: float = 30.0
    engine: EngineSpec | None = None  # None: the study's stored space's
    parent_pid: int | None = None  # the command that started it: the worker dies with it


def worker_process(args: WorkerArgs) -> None:
    """A worker process's target: :func:`tuner.run.pool.worker_main`, with the start-up's
    full collections deferred."""
    heap.defer_full_collections()
    heap.freeze_at_exit()
    from tuner.run.pool import worker_main

    worker_main(args)
