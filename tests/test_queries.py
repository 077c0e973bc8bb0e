"""SQL read-back (queries.studies, queries.trials) against Optuna's own API on the same DB."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

from tuner import queries
from tuner.errors import StudyNotFoundError
from tuner.runner import run_study
from tuner.space import load_space
from tuner.storage import TunerStorage


def _trial(study: optuna.Study, opt: str, state: TrialState,
           value: float | None = None, reports: tuple[float, ...] = ()) -> None:
    study.enqueue_trial({"opt": opt})  # fix the branch; `x` stays random
    trial = study.ask()
    trial.suggest_float("x", 0.0, 10.0)
    assert trial.suggest_categorical("opt", ["adam", "sgd"]) == opt
    if opt == "sgd":
        trial.suggest_int("n", 1, 8)  # a conditional: only some trials have it
    for step, v in enumerate(reports, start=1):
        trial.report(v, step)
    if state == TrialState.RUNNING:
        return
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> tuple[TunerStorage, str]:
    """One database for the read-only tests of this module (populating it is the slow part)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('queries') / 'tuner.db'}"
    return TunerStorage(url, heartbeat=False).open(), url


@pytest.fixture(scope="module")
def populated(db: tuple[TunerStorage, str]) -> dict[str, optuna.Study]:
    """Three studies made with Optuna's ask/tell: every trial state, both directions."""
    storage = db[0]
    maximize = optuna.create_study(study_name="max", storage=storage.optuna,
                                   direction="maximize",
                                   sampler=optuna.samplers.RandomSampler(seed=0))
    _trial(maximize, "adam", TrialState.COMPLETE, 0.5, reports=(0.4, 0.5))
    _trial(maximize, "sgd", TrialState.COMPLETE, 0.9)
    # Optuna gives a pruned trial its last intermediate value; here better than any
    # complete one, which must not put it at the top of a best-first listing.
    _trial(maximize, "adam", TrialState.PRUNED, reports=(0.95,))
    _trial(maximize, "sgd", TrialState.FAIL)
    _trial(maximize, "adam", TrialState.COMPLETE, 0.7)
    _trial(maximize, "adam", TrialState.RUNNING)
    maximize.enqueue_trial({"x": 7.0, "opt": "adam"})  # WAITING

    minimize = optuna.create_study(study_name="min", storage=storage.optuna,
                                   direction="minimize",
                                   sampler=optuna.samplers.RandomSampler(seed=1))
    for value in (3.0, 1.0, 2.0):
        _trial(minimize, "adam", TrialState.COMPLETE, value)
    _trial(minimize, "sgd", TrialState.PRUNED, reports=(0.5,))

    empty = optuna.create_study(study_name="empty", storage=storage.optuna)
    return {"max": maximize, "min": minimize, "empty": empty}


@pytest.fixture
def storage(db: tuple[TunerStorage, str], populated: dict[str, optuna.Study]) -> TunerStorage:
    """The populated database (read only)."""
    return db[0]


# --- studies --------------------------------------------------------------------------------


def test_studies_match_optuna(db: tuple[TunerStorage, str],
                              populated: dict[str, optuna.Study]) -> None:
    storage, storage_url = db
    rows = queries.studies(storage)
    assert [r["study"] for r in rows] == ["max", "min", "empty"]
    for row in rows:
        assert set(row) == set(queries.STUDY_COLUMNS)
        study = optuna.load_study(study_name=row["study"], storage=storage_url)
        trials = study.get_trials()
        states = [t.state for t in trials]
        assert row["direction"] == study.direction.name.lower()
        assert row["complete"] == states.count(TrialState.COMPLETE)
        assert row["pruned"] == states.count(TrialState.PRUNED)
        assert row["running"] == states.count(TrialState.RUNNING)
        assert row["failed"] == states.count(TrialState.FAIL)
        assert row["waiting"] == states.count(TrialState.WAITING)
        if TrialState.COMPLETE in states:
            assert row["best_value"] == study.best_value
        else:
            assert row["best_value"] is None
        starts = [t.datetime_start for t in trials if t.datetime_start is not None]
        assert row["created"] == (min(starts) if starts else None)
        ends = [t.datetime_complete or t.datetime_start for t in trials
                if t.datetime_start is not None]
        assert row["last_activity"] == (max(ends) if ends else None)


def test_studies_counts_of_the_populated_fixture(storage: TunerStorage,
                                                 populated: dict[str, optuna.Study]) -> None:
    by_name = {r["study"]: r for r in queries.studies(storage)}
    assert {k: by_name["max"][k] for k in ("complete", "pruned", "running", "failed",
                                            "waiting")} == {
        "complete": 3, "pruned": 1, "running": 1, "failed": 1, "waiting": 1}
    assert by_name["max"]["best_value"] == 0.9  # the pruned trial's 0.95 is not a result
    assert by_name["min"]["best_value"] == 1.0
    assert by_name["empty"]["complete"] == 0


def test_studies_on_an_empty_database(storage_url: str) -> None:
    assert queries.studies(TunerStorage(storage_url, heartbeat=False).open()) == []


# --- trials ---------------------------------------------------------------------------------


def test_trials_match_optuna(db: tuple[TunerStorage, str],
                             populated: dict[str, optuna.Study]) -> None:
    storage, storage_url = db
    for name in ("max", "min", "empty"):
        rows = queries.trials(storage, name)
        trials = optuna.load_study(study_name=name, storage=storage_url).get_trials()
        assert [r["number"] for r in rows] == [t.number for t in trials]
        for row, trial in zip(rows, trials, strict=True):
            assert row["state"] == trial.state.name.lower()
            assert row["value"] == trial.value
            assert row["params"] == trial.params
            if trial.duration is None:
                assert row["duration"] is None
            else:
                assert row["duration"] == pytest.approx(trial.duration.total_seconds(),
                                                        abs=1e-3)
            # Made by ask/tell, not by the tuner: none of the tuner's own columns.
            assert row["best_epoch"] is None and row["seed"] is None


def test_params_keep_their_types(storage: TunerStorage,
                                 populated: dict[str, optuna.Study]) -> None:
    rows = queries.trials(storage, "max", states=("complete",))
    for row in rows:
        assert isinstance(row["params"]["x"], float)
        assert row["params"]["opt"] in ("adam", "sgd")
        if row["params"]["opt"] == "sgd":
            assert isinstance(row["params"]["n"], int)
    assert queries.param_names(rows) == ["x", "opt", "n"]


@pytest.mark.parametrize(("states", "numbers"), [
    (("complete",), [0, 1, 4]),
    (("pruned",), [2]),
    (("fail",), [3]),
    (("running",), [5]),
    (("waiting",), [6]),
    (("pruned", "fail"), [2, 3]),
    (("COMPLETE", "running"), [0, 1, 4, 5]),
    ((), [0, 1, 2, 3, 4, 5, 6]),
])
def test_state_filter(storage: TunerStorage, populated: dict[str, optuna.Study],
                      states: tuple[str, ...], numbers: list[int]) -> None:
    rows = queries.trials(storage, "max", states=states)
    assert [r["number"] for r in rows] == numbers


def test_best_first_maximize(storage: TunerStorage, populated: dict[str, optuna.Study]) -> None:
    rows = queries.trials(storage, "max", states=("complete",), best_first=True)
    assert [(r["number"], r["value"]) for r in rows] == [(1, 0.9), (4, 0.7), (0, 0.5)]


def test_best_first_minimize(storage: TunerStorage, populated: dict[str, optuna.Study]) -> None:
    rows = queries.trials(storage, "min", states=("complete",), best_first=True)
    assert [r["value"] for r in rows] == [1.0, 2.0, 3.0]
    assert rows[0]["number"] == populated["min"].best_trial.number


def test_best_first_puts_results_before_unfinished_trials(
        storage: TunerStorage, populated: dict[str, optuna.Study]) -> None:
    """Complete trials, best first; then the others (pruned, failed, running, waiting),
    whose values are not results even when Optuna gives a pruned trial its last
    intermediate value."""
    for name, complete in (("max", [1, 4, 0]), ("min", [1, 2, 0])):
        rows = queries.trials(storage, name, best_first=True)
        assert [r["number"] for r in rows][:len(complete)] == complete, name
        assert {r["state"] for r in rows[len(complete):]} <= {"pruned", "fail", "running",
                                                               "waiting"}


def test_limit(storage: TunerStorage, populated: dict[str, optuna.Study]) -> None:
    rows = queries.trials(storage, "max", states=("complete",), best_first=True, limit=2)
    assert [r["number"] for r in rows] == [1, 4]
    assert len(queries.trials(storage, "max", limit=1)) == 1


def test_unknown_study(storage: TunerStorage, populated: dict[str, optuna.Study]) -> None:
    with pytest.raises(StudyNotFoundError, match=r"no study 'nope'.*max, min, empty"):
        queries.trials(storage, "nope")


# --- the tuner's own columns, from a real run -------------------------------------------------


def test_tuner_columns_from_a_real_run(storage_url: str, tiny_path: Path,
                                       tiny_space: dict[str, Any]) -> None:
    storage = TunerStorage(storage_url).open()
    space = load_space(tiny_path)
    run_study(space, storage=storage, study_name="tiny", budget=3, device=torch.device("cpu"))
    rows = queries.trials(storage, "tiny")
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    assert len(rows) == len(study.trials) == 3
    for row, trial in zip(rows, study.trials, strict=True):
        assert row["seed"] == trial.user_attrs["seed"]
        assert row["epochs_run"] == len(trial.intermediate_values) == space.task.epochs
        assert row["best_epoch"] in trial.intermediate_values
        if trial.state == TrialState.COMPLETE:
            best = trial.intermediate_values[row["best_epoch"]]
            assert best == pytest.approx(max(trial.intermediate_values.values()))
            assert row["value"] == pytest.approx(best)
    best_rows = queries.trials(storage, "tiny", states=("complete",), best_first=True, limit=1)
    assert best_rows[0]["number"] == study.best_trial.number
    assert best_rows[0]["test_metric"] is not None
