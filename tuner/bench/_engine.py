"""The tuner's engine (its objective and training loop) under a given storage.

Trials are driven by ``study.optimize``, as in the baseline, so that the variants
differ only in what they are meant to compare: the training loop and the storage.
On a :class:`~tuner.storage.TunerStorage` (the tuner's default: Optuna's schema and the
tuner's tables, WAL, heartbeats) the study is created as ``tuner start`` creates it; on
Optuna's in-memory storage a :class:`~tuner.storage.MemoryRecorder` keeps what the tuner
records beyond Optuna.
"""

from __future__ import annotations

from typing import Literal

import optuna

from tuner.run.study import open_study
from tuner.space import Space
from tuner.space.sampling import build_pruner, build_sampler
from tuner.storage import MemoryRecorder, TrialRecorder, TunerStorage


def create_engine_study(space: Space, storage: TunerStorage | optuna.storages.InMemoryStorage,
                        name: str) -> tuple[optuna.Study, TrialRecorder]:
    """The study ``name`` of ``space`` and the recorder the objective writes to; run it
    with ``study.optimize(Objective(space, recorder, device), n_trials=...)``."""
    if isinstance(storage, TunerStorage):
        return open_study(storage, space, name), storage
    direction: Literal["minimize", "maximize"] = (
        "maximize" if space.task.direction == "maximize" else "minimize")
    study = optuna.create_study(storage=storage, study_name=name, direction=direction,
                                sampler=build_sampler(space),
                                pruner=build_pruner(space.pruner, space.task.epochs))
    return study, MemoryRecorder()
