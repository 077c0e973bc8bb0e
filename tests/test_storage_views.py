"""The flat SQL views (tuner/storage/_views.py), read by plain SQL clients, against Optuna."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from tuner.storage import TunerStorage
from tuner.storage._views import VIEWS


def _populate(storage: TunerStorage, name: str) -> optuna.Study:
    """Every kind of parameter (float, int, str/bool/None categoricals, a conditional),
    every state, and the tuner's own rows for some trials."""
    study = optuna.create_study(study_name=name, storage=storage.optuna, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(12):
        trial = study.ask()
        trial.suggest_float("l2", 1e-6, 1e-2, log=True)
        trial.suggest_int("layers", 1, 4)
        opt = trial.suggest_categorical("optimizer", ["adam", "momentum"])
        trial.suggest_categorical("batchnorm", [False, True])
        trial.suggest_categorical("extra", [None, 3, 2.5])
        if opt == "momentum":
            trial.suggest_float("momentum", 0.5, 0.9)
        trial.report(0.1 * i, 1)
        state = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL][i % 3]
        if i == 11:
            continue  # left RUNNING
        study.tell(trial, 0.5 + i / 100 if state == TrialState.COMPLETE else None, state=state)
        if state == TrialState.COMPLETE:
            storage.record_trial(trial_id=trial._trial_id, study_id=study._study_id, seed=i,
                                 best_epoch=1, outcome="completed", device="cpu",
                                 history=[_Epoch(1), _Epoch(2)])
    return study


class _Epoch:
    def __init__(self, epoch: int) -> None:
        self.epoch, self.train_loss, self.val_loss = epoch, 1.0 / epoch, 2.0 / epoch
        self.val_metric, self.lr, self.seconds = 0.5 + epoch / 10, 0.01, 0.25


def _as_dt(value: Any) -> datetime | None:
    return value if value is None or isinstance(value, datetime) else datetime.fromisoformat(value)


def _check_trial_summary(rows: list[dict[str, Any]], study: optuna.Study, name: str) -> None:
    trials: dict[int, FrozenTrial] = {t.number: t for t in study.get_trials()}
    assert sorted(r["number"] for r in rows) == sorted(trials)
    for row in rows:
        trial = trials[row["number"]]
        assert row["study"] == name and row["trial_id"] == trial._trial_id
        assert row["state"] == trial.state.name.lower()
        assert row["value"] == trial.value
        params = row["params"] if isinstance(row["params"], dict) else json.loads(row["params"])
        assert params == trial.params  # categoricals decoded, types kept (bool, None, int)
        assert _as_dt(row["datetime_start"]) == trial.datetime_start
        if trial.duration is None:
            assert row["duration"] is None
        else:
            assert math.isclose(float(row["duration"]), trial.duration.total_seconds(),
                                abs_tol=1e-3)
        if trial.state == TrialState.COMPLETE:
            assert (row["seed"], row["best_epoch"], row["epochs_run"]) == (trial.number, 1, 2)
        else:
            assert row["seed"] is None


def test_trial_summary_on_sqlite_matches_optuna(storage_url: str, db_path: Path) -> None:
    storage = TunerStorage(storage_url, heartbeat=False).open()
    study = _populate(storage, "v")
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in conn.execute("SELECT * FROM trial_summary")]
        epochs = conn.execute("SELECT number, epoch, val_metric FROM epoch_summary "
                              "WHERE study = 'v' ORDER BY number, epoch").fetchall()
    finally:
        conn.close()
    _check_trial_summary(rows, study, "v")
    complete = [t.number for t in study.trials if t.state == TrialState.COMPLETE]
    assert [tuple(e) for e in epochs] == [(n, e, 0.5 + e / 10) for n in complete for e in (1, 2)]


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="no sqlite3 command-line client")
def test_the_readme_example_with_the_sqlite3_client(storage_url: str, db_path: Path) -> None:
    storage = TunerStorage(storage_url, heartbeat=False).open()
    study = _populate(storage, "v")
    out = subprocess.run(["sqlite3", "-json", str(db_path),
                          "select * from trial_summary order by value desc limit 5"],
                         capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    # Optuna gives pruned trials a value too (their last report): they rank here.
    best = sorted((t for t in study.trials if t.value is not None), key=lambda t: -t.value)
    assert [r["number"] for r in rows] == [t.number for t in best[:5]]
    assert json.loads(rows[0]["params"]) == best[0].params
    out = subprocess.run(["sqlite3", "-json", str(db_path),
                          "select number from trial_summary where state = 'complete' "
                          "order by value desc limit 1"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [{"number": study.best_trial.number}]


def test_views_are_created_once_and_kept(storage_url: str, db_path: Path) -> None:
    TunerStorage(storage_url, heartbeat=False).open()
    TunerStorage(storage_url, heartbeat=False).open()  # a second worker: no error
    conn = sqlite3.connect(db_path)
    try:
        views = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='view'")}
    finally:
        conn.close()
    assert views == set(VIEWS)


@pytest.fixture
def pg_storage(pg_url: str) -> Iterator[tuple[TunerStorage, str]]:
    name = f"view-{uuid.uuid4().hex[:8]}"
    storage = TunerStorage(pg_url, heartbeat=False).open()
    yield storage, name
    optuna.delete_study(study_name=name, storage=storage.optuna)


@pytest.mark.postgres
@pytest.mark.slow
def test_trial_summary_on_postgresql_matches_optuna(pg_storage: tuple[TunerStorage, str]) -> None:
    storage, name = pg_storage
    study = _populate(storage, name)
    with storage.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(
            sqlalchemy.text("SELECT * FROM trial_summary WHERE study = :s"), {"s": name})]
        epochs = conn.execute(sqlalchemy.text(
            "SELECT count(*) FROM epoch_summary WHERE study = :s"), {"s": name}).scalar()
    _check_trial_summary(rows, study, name)
    assert epochs == 2 * sum(t.state == TrialState.COMPLETE for t in study.trials)
