"""A database that drops mid-study: retried with backoff, then one clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
import torch

import tuner.run.runner as runner
from tuner.errors import StorageError
from tuner.space import parse_space
from tuner.storage import TunerStorage

SPACE = {"task": {"dataset": "iris", "epochs": 2}, "pruner": {"name": "none"},
         "params": {"hidden": 8, "layers": 1}}


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(runner.time, "sleep", slept.append)
    return slept


def _flaky(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[int]:
    """Make the budget claim fail `failures` times as a dropped connection would."""
    real = runner.claim
    calls = [0]

    def claim(*args: Any) -> Any:
        calls[0] += 1
        if calls[0] <= failures:
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed "
                                                                            "the connection"))
        return real(*args)

    monkeypatch.setattr(runner, "claim", claim)
    return calls


def test_a_dropped_connection_is_retried_with_backoff(tmp_path: Path, no_sleep: list[float],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _flaky(monkeypatch, failures=3)
    storage = TunerStorage(f"sqlite:///{tmp_path / 't.db'}").open()
    summary = runner.run_study(parse_space(SPACE, name="s", source="s"), storage=storage,
                               study_name="s", budget=2, device=torch.device("cpu"))
    assert summary.finished == 2
    assert no_sleep[:3] == [1.0, 2.0, 4.0]  # exponential backoff


def test_a_database_that_stays_down_fails_with_one_line(tmp_path: Path, no_sleep: list[float],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _flaky(monkeypatch, failures=100)
    storage = TunerStorage(f"sqlite:///{tmp_path / 't.db'}").open()
    with pytest.raises(StorageError, match="could not get it back in 6 tries") as info:
        runner.run_study(parse_space(SPACE, name="s", source="s"), storage=storage,
                         study_name="s", budget=2, device=torch.device("cpu"))
    assert "server closed the connection" in str(info.value)
    assert "\n" not in str(info.value)
    assert no_sleep == [1.0, 2.0, 4.0, 8.0, 16.0]


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_connections_killed_mid_study_are_survived(pg_url: str) -> None:
    """Kill every server connection of the study while it runs (what a restart does)."""
    import threading
    import uuid

    import optuna

    url = pg_url.replace("postgresql://", "postgresql+psycopg://", 1)
    name = f"drop-{uuid.uuid4().hex[:8]}"
    storage = TunerStorage(pg_url).open()
    space = parse_space({**SPACE, "task": {"dataset": "iris", "epochs": 30}}, name="s",
                        source="s")
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["summary"] = runner.run_study(space, storage=storage, study_name=name,
                                                 budget=6, device=torch.device("cpu"))
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    killer = sqlalchemy.create_engine(url)
    killed = 0
    try:
        for _ in range(3):
            thread.join(0.7)
            with killer.begin() as conn:
                killed += conn.execute(sqlalchemy.text(
                    "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
        thread.join(120)
    finally:
        killer.dispose()
    assert "error" not in result, result.get("error")
    assert killed > 0
    study = optuna.load_study(study_name=name, storage=url)
    done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()
            and t.state != optuna.trial.TrialState.FAIL]
    assert len(done) == 6
    optuna.delete_study(study_name=name, storage=url)


def test_opening_a_database_another_process_is_creating_retries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening writes Optuna's schema rows where missing; a process that loses that race
    to another (a unique-key violation) opens again instead of failing."""
    import tuner.storage._store as store

    real, calls = store.TunerRDBStorage, []

    def racing(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise sqlalchemy.exc.IntegrityError(
                "INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed"))
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "TunerRDBStorage", racing)
    storage = TunerStorage(f"sqlite:///{tmp_path / 'race.db'}").open()
    assert len(calls) == 2 and storage.study_names() == []

    def always(*args: Any, **kwargs: Any) -> Any:
        raise sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))

    monkeypatch.setattr(store, "TunerRDBStorage", always)
    with pytest.raises(StorageError, match="UNIQUE constraint failed"):
        TunerStorage(f"sqlite:///{tmp_path / 'race2.db'}").open()
