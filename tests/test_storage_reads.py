"""What the rooms above storage read and hold through TunerStorage instead of SQL of
their own (tuner/storage/_store.py, tuner/storage/_bulk.py): checked against Optuna's
reading of the same study and against what was recorded."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tuner.errors import StudyNotFoundError
from tuner.storage import TunerStorage, close_connections, insert_trials, next_trial_id
from tuner.storage.optuna_compat import study_id_of, trial_id_of
from tuner.train.loop import EpochMetrics


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[TunerStorage]:
    st = TunerStorage(f"sqlite:///{tmp_path / 'reads.db'}", heartbeat=False).open()
    yield st
    close_connections(st)


def _recorded(storage: TunerStorage, study: optuna.Study, values: list[float]) -> int:
    """A trial with the tuner's rows for ``values`` (one epoch each), told COMPLETE."""
    trial = study.ask()
    history = [EpochMetrics(epoch=e, train_loss=1.0, val_loss=1.0, val_metric=v, lr=0.1,
                            seconds=0.0) for e, v in enumerate(values, 1)]
    storage.record_trial(trial_id=trial_id_of(trial), study_id=study_id_of(study), seed=0,
                         best_epoch=2, outcome="completed", device="cpu", history=history)
    study.tell(trial, 0.5)
    return trial_id_of(trial)


def test_study_id_is_optunas_and_a_missing_study_names_those_there_are(
        storage: TunerStorage) -> None:
    with pytest.raises(StudyNotFoundError, match="this database has no studies"):
        storage.study_id("reg")
    study = optuna.create_study(study_name="demo", storage=storage.studies)
    assert storage.study_id("demo") == study_id_of(study)
    with pytest.raises(StudyNotFoundError, match="no study 'reg' in the storage; studies "
                                                 "here: demo"):
        storage.study_id("reg")


def test_state_counts_are_optunas(storage: TunerStorage) -> None:
    study = optuna.create_study(study_name="counts", storage=storage.studies)
    assert storage.state_counts(study_id_of(study)) == dict.fromkeys(TrialState, 0)
    study.tell(study.ask(), 1.0)
    study.tell(study.ask(), state=TrialState.PRUNED)
    study.tell(study.ask(), state=TrialState.FAIL)
    study.ask()
    study.enqueue_trial({})
    counts = storage.state_counts(study_id_of(study))
    assert counts == {s: len(study.get_trials(states=(s,))) for s in TrialState}
    assert sum(counts.values()) == 5


def test_a_trials_best_epoch_test_metric_and_curve(storage: TunerStorage) -> None:
    study = optuna.create_study(study_name="reads", storage=storage.studies)
    bare = study.ask()  # no rows of the tuner's
    assert storage.best_epoch_and_test_metric(trial_id_of(bare)) == (None, None)
    assert storage.test_metric(trial_id_of(bare)) is None
    assert storage.recorded_curve(trial_id_of(bare)) == ([], None)

    trial_id = _recorded(storage, study, [0.5, float("nan"), 0.75])
    assert storage.best_epoch_and_test_metric(trial_id) == (2, None)
    storage.set_test_metric(trial_id, 0.625)
    assert storage.best_epoch_and_test_metric(trial_id) == (2, 0.625)
    assert storage.test_metric(trial_id) == 0.625
    assert storage.recorded_curve(trial_id) == ([0.5, None, 0.75], "cpu")


def test_the_lock_excludes_across_storages(storage: TunerStorage) -> None:
    other = TunerStorage(storage.url, heartbeat=False).open()
    entered = threading.Event()
    order: list[str] = []

    def second() -> None:
        entered.wait()
        with other.lock(7):
            order.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    with storage.lock(7):
        entered.set()
        thread.join(0.3)  # it waits for the lock
        order.append("first")
    thread.join()
    close_connections(other)
    assert order == ["first", "second"]


def test_closed_connections_reopen(storage: TunerStorage) -> None:
    optuna.create_study(study_name="kept", storage=storage.optuna)
    close_connections(storage)
    assert storage.study_names() == ["kept"]


def test_bulk_inserted_trials_are_optunas(storage: TunerStorage) -> None:
    study = optuna.create_study(study_name="bulk", storage=storage.optuna)
    first = next_trial_id(storage)
    assert first == 1
    row = dict(trial_id=first, number=0, study_id=study_id_of(study), state="COMPLETE",
               datetime_start=None, datetime_complete=None)
    insert_trials(storage, trial_rows=[row],
                  params=[dict(trial_id=first, param_name="x", param_value=0.5,
                               distribution_json=optuna.distributions.distribution_to_json(
                                   optuna.distributions.FloatDistribution(0, 1)))],
                  values=[dict(trial_id=first, objective=0, value=0.25, value_type="FINITE")],
                  steps=[dict(trial_id=first, step=1, intermediate_value=0.125,
                              intermediate_value_type="FINITE")],
                  tuner_rows=[dict(trial_id=first, study_id=study_id_of(study), seed=0,
                                   best_epoch=1, epochs_run=1, outcome="completed",
                                   device="cpu")])
    (trial,) = optuna.load_study(study_name="bulk", storage=storage.optuna).trials
    assert (trial.number, trial.params, trial.value) == (0, {"x": 0.5}, 0.25)
    assert trial.intermediate_values == {1: 0.125}
    assert storage.best_epoch_and_test_metric(first) == (1, None)
    assert next_trial_id(storage) == first + 1
