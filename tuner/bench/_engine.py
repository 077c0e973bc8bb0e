"""The tuner's engine (its objective and training loop) under a given storage.

Trials are driven by ``study.optimize``, as in the baseline, so that the variants
differ only in what they are meant to compare: the training loop and the storage.
With a database URL the storage is the tuner's default (:class:`~tuner.storage.TunerStorage`:
Optuna's schema and the tuner's tables, WAL, heartbeats) and the study is created as
``tuner start`` creates it; without one it is Optuna's in-memory storage with a
:class:`~tuner.storage.MemoryRecorder` for what the tuner records beyond Optuna.
"""

from __future__ import annotations

from typing import Literal

import optuna

from tuner.samplers import build_pruner, build_sampler
from tuner.space import Space
from tuner.storage import MemoryRecorder, TrialRecorder, TunerStorage
from tuner.study import open_study

STUDY_NAME = "bench"


def create_engine_study(space: Space, storage_url: str | None = None,
                        ) -> tuple[optuna.Study, TrialRecorder]:
    """The study of ``space`` and the recorder the objective writes to; run it with
    ``study.optimize(Objective(space, recorder, device), n_trials=...)``."""
    if storage_url is None:
        direction: Literal["minimize", "maximize"] = (
            "maximize" if space.task.direction == "maximize" else "minimize")
        study = optuna.create_study(direction=direction,
                                    sampler=build_sampler(space),
                                    pruner=build_pruner(space.pruner, space.task.epochs))
        return study, MemoryRecorder()
    storage = TunerStorage(storage_url).open()
    return open_study(storage, space, STUDY_NAME), storage
