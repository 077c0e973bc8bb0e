"""What the objective records about a trial beyond Optuna's own trial: the interface,
and an implementation that keeps everything in memory.

:class:`~tuner.storage.TunerStorage` records into the study database; a
:class:`MemoryRecorder` pairs with Optuna's ``InMemoryStorage`` (``tuner bench``, tests),
so that the same objective runs with or without a database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna


class TrialRecorder(Protocol):
    """Where the objective puts a trial's curve and attributes, its summary, checkpoints
    and test metric. Every method is one write (one transaction for a database)."""

    def write_trial(self, trial: optuna.Trial, values: Sequence[tuple[int, float]] = (),
                    user_attrs: Mapping[str, Any] | None = None) -> None:
        """Add intermediate values ``(epoch, value)`` and user attributes to a running
        Optuna trial."""

    def record_trial(self, *, trial_id: int, study_id: int, seed: int, best_epoch: int | None,
                     outcome: str, device: str, history: Sequence[Any],
                     trial: optuna.Trial | None = None, values: Sequence[tuple[int, float]] = (),
                     user_attrs: Mapping[str, Any] | None = None) -> None:
        """Record a finished trial's per-epoch metrics and its summary; with ``trial``,
        also what :meth:`write_trial` would still write for it, in the same write."""

    def save_checkpoint(self, study_id: int, number: int, epoch: int, state: bytes) -> None:
        """Keep (replace) the checkpoint of the trial chain started by trial ``number``."""

    def load_checkpoint(self, study_id: int, number: int) -> bytes | None:
        """The checkpoint saved for trial ``number``, or None."""

    def delete_checkpoint(self, study_id: int, number: int) -> None:
        """Forget the checkpoint of trial ``number`` (its trial has finished)."""

    def set_test_metric(self, trial_id: int, value: float) -> None:
        """Record the test metric of a trial that became the study's best."""

    def save_model(self, trial_id: int, blob: bytes) -> None:
        """Keep the best epoch's weights of a trial that became the study's best."""

    def load_model_blob(self, trial_id: int) -> bytes | None:
        """The weights saved for ``trial_id``, or None."""


@dataclass
class TrialRecord:
    """What a :class:`MemoryRecorder` keeps about one trial."""

    study_id: int
    seed: int
    best_epoch: int | None
    outcome: str
    device: str
    history: list[Any]
    test_metric: float | None = None


@dataclass
class MemoryRecorder:
    """A :class:`TrialRecorder` that keeps everything in dictionaries.

    >>> recorder = MemoryRecorder()
    >>> recorder.save_checkpoint(0, 3, epoch=5, state=b"...")
    >>> recorder.load_checkpoint(0, 3)
    b'...'
    """

    trials: dict[int, TrialRecord] = field(default_factory=dict)
    checkpoints: dict[tuple[int, int], bytes] = field(default_factory=dict)
    models: dict[int, bytes] = field(default_factory=dict)

    def write_trial(self, trial: optuna.Trial, values: Sequence[tuple[int, float]] = (),
                    user_attrs: Mapping[str, Any] | None = None) -> None:
        # In-memory storage has no transactions to save: Optuna's own call per item.
        for epoch, value in values:
            trial.report(value, epoch)
        for key, value in (user_attrs or {}).items():
            trial.set_user_attr(key, value)

    def record_trial(self, *, trial_id: int, study_id: int, seed: int, best_epoch: int | None,
                     outcome: str, device: str, history: Sequence[Any],
                     trial: optuna.Trial | None = None, values: Sequence[tuple[int, float]] = (),
                     user_attrs: Mapping[str, Any] | None = None) -> None:
        if trial is not None and (values or user_attrs):
            self.write_trial(trial, values, user_attrs)
        self.trials[trial_id] = TrialRecord(study_id, seed, best_epoch, outcome, device,
                                            list(history))

    def save_checkpoint(self, study_id: int, number: int, epoch: int, state: bytes) -> None:
        self.checkpoints[study_id, number] = state

    def load_checkpoint(self, study_id: int, number: int) -> bytes | None:
        return self.checkpoints.get((study_id, number))

    def delete_checkpoint(self, study_id: int, number: int) -> None:
        self.checkpoints.pop((study_id, number), None)

    def set_test_metric(self, trial_id: int, value: float) -> None:
        self.trials[trial_id].test_metric = value

    def save_model(self, trial_id: int, blob: bytes) -> None:
        self.models[trial_id] = blob

    def load_model_blob(self, trial_id: int) -> bytes | None:
        return self.models.get(trial_id)
