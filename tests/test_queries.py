"""SQL read-back (queries.studies, queries.trials) against Optuna's own API on the same DB."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

from tuner import queries
from tuner.errors import StorageError, StudyNotFoundError, UsageError
from tuner.run.runner import run_study
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


def test_curves_from_a_real_run_match_the_epochs(storage_url: str, tiny_path: Path) -> None:
    storage = TunerStorage(storage_url).open()
    run_study(load_space(tiny_path), storage=storage, study_name="tiny", budget=2,
              device=torch.device("cpu"))
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    rows = queries.curves(storage, "tiny", [1, 0])
    assert [r["trial"] for r in rows] == [1] * 2 + [0] * 2  # in the order asked for
    for trial in study.trials:
        mine = [r for r in rows if r["trial"] == trial.number]
        assert {r["epoch"]: r["val_metric"] for r in mine} == pytest.approx(
            trial.intermediate_values)
        assert all(r["train_loss"] is not None and r["lr"] is not None for r in mine)


# --- a plain Optuna database, and files that are not one ---------------------------------------


@pytest.fixture
def plain_optuna(tmp_path: Path, db_snapshot: Any) -> tuple[str, Path]:
    """An Optuna database made by Optuna alone: none of the tuner's tables."""
    path = tmp_path / "plain.db"
    url = f"sqlite:///{path}"
    study = optuna.create_study(study_name="plain", storage=url, direction="minimize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(6):
        trial = study.ask()
        x = trial.suggest_float("x", -3, 3)
        trial.suggest_categorical("kind", ["a", "b"])
        for step in range(1, 4):
            trial.report(x * x + 1 / step, step)
        if i == 4:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, x * x)
    assert "tuner_trials" not in db_snapshot(path)
    return url, path


def _schema(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return sorted(conn.execute("SELECT type, name FROM sqlite_master").fetchall())
    finally:
        conn.close()


def test_reading_a_plain_optuna_database_changes_nothing(plain_optuna: tuple[str, Path],
                                                         db_snapshot: Any) -> None:
    url, path = plain_optuna
    before, schema = db_snapshot(path), _schema(path)
    storage = TunerStorage(url, create=False, heartbeat=False).open()
    assert storage.tuner_tables is False
    study = optuna.load_study(study_name="plain", storage=url)
    rows = queries.trials(storage, "plain", where="kind == 'a' or x > 0", sort=["-value"])
    expected = [t for t in study.trials if t.params["kind"] == "a" or t.params["x"] > 0]
    assert sorted(r["number"] for r in rows) == sorted(t.number for t in expected)
    assert all(r["best_epoch"] is None and r["seed"] is None for r in rows)
    (best,) = queries.best_trials(storage, "plain")
    assert (best["number"], best["value"]) == (study.best_trial.number, study.best_value)
    assert [r["study"] for r in queries.studies(storage)] == ["plain"]
    curves = queries.curves(storage, "plain", [2])
    assert {r["epoch"]: r["val_metric"] for r in curves} == study.trials[2].intermediate_values
    assert db_snapshot(path) == before
    assert _schema(path) == schema  # no table, index or view created


def test_creating_open_adds_the_tuner_tables_and_views(plain_optuna: tuple[str, Path]) -> None:
    """The contrast: a worker's open (create=True) does add them."""
    url, path = plain_optuna
    TunerStorage(url, heartbeat=False).open()
    names = {name for _, name in _schema(path)}
    assert {"tuner_trials", "tuner_epochs", "trial_summary", "epoch_summary"} <= names


@pytest.mark.parametrize("content", ["empty", "unrelated", "garbage"])
def test_a_file_that_is_not_an_optuna_database(tmp_path: Path, content: str) -> None:
    path = tmp_path / "other.db"
    if content == "garbage":
        path.write_bytes(b"this is not a database at all\n" * 100)
    else:
        conn = sqlite3.connect(path)
        if content == "unrelated":
            conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
            conn.execute("INSERT INTO customers (name) VALUES ('ada')")
            conn.commit()
        conn.close()
    before = path.read_bytes()
    with pytest.raises(StorageError, match=r"not (an Optuna study|a database)") as info:
        TunerStorage(f"sqlite:///{path}", create=False, heartbeat=False).open()
    assert "\n" not in str(info.value)
    assert path.read_bytes() == before


def test_a_database_missing_some_optuna_tables(tmp_path: Path) -> None:
    path = tmp_path / "half.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY, study_name TEXT)")
    conn.execute("CREATE TABLE trials (trial_id INTEGER PRIMARY KEY)")
    conn.close()
    with pytest.raises(StorageError, match="missing tables: study_directions, trial_params"):
        TunerStorage(f"sqlite:///{path}", create=False, heartbeat=False).open()
    assert {name for _, name in _schema(path)} == {"studies", "trials"}


def test_infinite_values_sort_where_optuna_puts_them(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'inf.db'}"
    storage = TunerStorage(url, heartbeat=False).open()
    study = optuna.create_study(study_name="inf", storage=storage.optuna, direction="maximize")
    for value in (1.0, float("inf"), 2.0, float("-inf")):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        study.tell(trial, value)
    rows = queries.trials(storage, "inf", best_first=True)
    assert [r["value"] for r in rows] == [float("inf"), 2.0, 1.0, float("-inf")]
    assert rows[0]["number"] == study.best_trial.number
    assert [r["value"] for r in queries.trials(storage, "inf", sort=["value"])] == [
        float("-inf"), 1.0, 2.0, float("inf")]


def test_curves_of_a_trial_that_does_not_exist(storage: TunerStorage,
                                               populated: dict[str, optuna.Study]) -> None:
    with pytest.raises(UsageError, match=r"study 'min' has no trial 9; its trials are 0\.\.3"):
        queries.curves(storage, "min", [0, 9])
    with pytest.raises(UsageError, match="it has no trials"):
        queries.curves(storage, "empty", [0])


def test_columns_must_exist(storage: TunerStorage, populated: dict[str, optuna.Study]) -> None:
    assert queries.trials(storage, "max", columns=["number", "seed", "n"])
    with pytest.raises(UsageError, match=r"--columns: unknown column 'nn'; study 'max' has: "
                                         r"number, .*datetime_complete, n, opt, x"):
        queries.trials(storage, "max", columns=["number", "nn"])


@pytest.mark.slow
def test_many_trials_fetch_their_params_in_chunks(tmp_path: Path) -> None:
    """More trials than SQLite allows bound parameters in one IN (...) list."""
    from tuner.bench._query import build_study

    url = f"sqlite:///{tmp_path / 'many.db'}"
    storage = TunerStorage(url, heartbeat=False).open()
    build_study(storage, "many", 12_000, steps=1)
    rows = queries.trials(storage, "many", where="number >= 1000")
    assert len(rows) == 11_000 and all(len(r["params"]) == 10 for r in rows)
    trial = optuna.load_study(study_name="many", storage=url).trials[-1]
    assert rows[-1]["params"] == trial.params
