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


def test_record_trials_writes_what_record_trial_does_in_one_transaction(
        tmp_path: Path) -> None:
    """The fused engine's batch: the same rows in every table as one record_trial per
    trial (read back from both databases), a trial finished elsewhere skipped and named,
    and one transaction for all."""
    from sqlalchemy import event

    from tuner.train.loop import EpochMetrics

    def history(seed: int) -> list[EpochMetrics]:
        return [EpochMetrics(e, 1.0 / (e + seed), 0.5 + seed, float("nan") if e == 2 else 0.1 * e,
                             0.01, 0.2) for e in (1, 2, 3)]

    def fill(name: str, batch: bool) -> TunerStorage:
        storage = TunerStorage(f"sqlite:///{tmp_path / name}", heartbeat=False).open()
        study = optuna.create_study(storage=storage.optuna, direction="maximize")
        trials = [study.ask() for _ in range(4)]
        study.tell(trials[2], state=optuna.trial.TrialState.FAIL)  # failed as stale
        entries = [dict(trial_id=t._trial_id, study_id=study._study_id, seed=i,
                        best_epoch=3 if i else None, outcome="completed", device="cpu",
                        history=history(i), trial=t, values=[(1, 0.1), (3, 0.3 + i)],
                        user_attrs={"seed": i, "engine": "fused"} if i != 1 else {})
                   for i, t in enumerate(trials)]
        if batch:
            commits: list[int] = []
            event.listen(storage.engine, "commit", lambda conn: commits.append(1))
            assert storage.record_trials(entries) == {trials[2]._trial_id}
            assert len(commits) == 1
        else:
            for i, entry in enumerate(entries):
                if i != 2:
                    storage.record_trial(**entry)
        return storage

    def dump(storage: TunerStorage) -> dict[str, list[tuple[object, ...]]]:
        tables = ("tuner_epochs", "tuner_trials", "trial_intermediate_values",
                  "trial_user_attributes")
        with storage.session() as conn:
                # Without the row ids of Optuna's tables (their order of insertion differs).
            cut = {"trial_intermediate_values": 1, "trial_user_attributes": 1}
            return {t: sorted(tuple(r)[cut.get(t, 0):] for r in conn.exec_driver_sql(
                f"SELECT * FROM {t}").all()) for t in tables}

    one, batch = dump(fill("one.db", False)), dump(fill("batch.db", True))
    for table, rows in one.items():
        assert batch[table] == rows, table
    assert len(one["tuner_trials"]) == 3 and len(one["tuner_epochs"]) == 9
