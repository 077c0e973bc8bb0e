"""The trial recorders (tuner/storage/_recorder.py and TunerStorage): one conformance
suite run against both, checked through Optuna's own reading of the trial."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from tuner.storage import MemoryRecorder, TrialRecorder, TunerStorage


@pytest.fixture(params=["memory", "sqlite"])
def study_and_recorder(request: pytest.FixtureRequest,
                       tmp_path: Path) -> Iterator[tuple[optuna.Study, TrialRecorder]]:
    if request.param == "memory":
        yield optuna.create_study(direction="maximize"), MemoryRecorder()
        return
    storage = TunerStorage(f"sqlite:///{tmp_path / 'tuner.db'}", heartbeat=False).open()
    yield optuna.create_study(storage=storage.optuna, direction="maximize"), storage
    storage.engine.dispose()


def test_written_values_and_attributes_are_optunas_own(
        study_and_recorder: tuple[optuna.Study, TrialRecorder]) -> None:
    study, recorder = study_and_recorder
    trial = study.ask()
    recorder.write_trial(trial, [(1, 0.5), (2, float("nan"))], {"seed": 7})
    recorder.write_trial(trial, [(3, 0.75)], {"seed": 8, "note": "x"})  # a key again: replaced
    study.tell(trial, 0.75)

    (frozen,) = study.get_trials()
    assert set(frozen.intermediate_values) == {1, 2, 3}
    assert frozen.intermediate_values[1] == 0.5 and frozen.intermediate_values[3] == 0.75
    assert math.isnan(frozen.intermediate_values[2])
    assert frozen.user_attrs == {"seed": 8, "note": "x"}


def test_a_finished_trial_is_not_updated(
        study_and_recorder: tuple[optuna.Study, TrialRecorder]) -> None:
    study, recorder = study_and_recorder
    trial = study.ask()
    study.tell(trial, state=optuna.trial.TrialState.FAIL)

    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        recorder.write_trial(trial, [(1, 0.5)])
    assert study.get_trials()[0].intermediate_values == {}


def test_nothing_to_write_writes_nothing(
        study_and_recorder: tuple[optuna.Study, TrialRecorder]) -> None:
    study, recorder = study_and_recorder
    trial = study.ask()
    study.tell(trial, 1.0)
    recorder.write_trial(trial, [], {})  # no check, no error: there is nothing to write


def test_checkpoints_round_trip(study_and_recorder: tuple[optuna.Study, TrialRecorder]) -> None:
    _, recorder = study_and_recorder
    assert recorder.load_checkpoint(1, 0) is None
    recorder.save_checkpoint(1, 0, 3, b"three")
    recorder.save_checkpoint(1, 0, 4, b"four")  # replaces
    recorder.save_checkpoint(1, 1, 2, b"other")
    assert recorder.load_checkpoint(1, 0) == b"four"
    recorder.delete_checkpoint(1, 0)
    assert recorder.load_checkpoint(1, 0) is None
    assert recorder.load_checkpoint(1, 1) == b"other"
