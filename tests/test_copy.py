"""`tuner copy` (tuner/storage/_copy.py): a study into another database with the tuner's
rows, their ids mapped; what `tuner best` and `tuner curves` read of the copy, and every
row of the tuner's tables by trial number, against the source."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
import torch
from click.testing import CliRunner, Result
from optuna.storages._rdb.models import TrialModel

from tuner.cli import cli
from tuner.run.runner import run_study
from tuner.space import parse_space
from tuner.storage import TunerStorage
from tuner.storage._copy import TRIAL_TABLES, copy_study
from tuner.storage._tables import checkpoints, epoch_metrics

Snapshot = Callable[[Path], dict[str, list[tuple[Any, ...]]]]

TINY = {
    "task": {"dataset": "iris", "model": "mlp", "epochs": 3},
    "sampler": {"name": "random"},
    "pruner": {"name": "none"},
    "params": {"hidden": 8, "layers": 1, "lr": {"low": 1e-3, "high": 1e-1, "log": True}},
}


def _invoke(args: Sequence[str]) -> Result:
    return CliRunner().invoke(cli, list(args))


def _run(storage: TunerStorage, name: str, trials: int) -> None:
    space = parse_space(TINY, name="tiny", source="tiny")
    run_study(space, storage=storage, study_name=name, budget=trials, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A study `reg` after another one (so its trial ids are not its numbers), with a
    checkpoint, per-epoch metrics of a function of yours and a waiting trial besides what
    a run records."""
    url = f"sqlite:///{tmp_path_factory.mktemp('copy') / 'source.db'}"
    storage = TunerStorage(url, heartbeat=False).open()
    _run(storage, "first", 2)
    _run(storage, "reg", 4)
    study = optuna.load_study(study_name="reg", storage=storage.optuna)
    trial = study.trials[1]
    storage.save_checkpoint(study._study_id, trial.number, 2, b"checkpoint bytes")
    with storage.session() as conn:
        conn.execute(epoch_metrics.insert(), [
            dict(trial_id=trial._trial_id, epoch=e, name="f1", value=e / 10) for e in (1, 2)])
    study.enqueue_trial({"lr": 0.02})
    return url


def _rows(url: str, study: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tuner's tables for the study, its ids replaced by trial numbers."""
    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            sid = conn.execute(sqlalchemy.text("SELECT study_id FROM studies WHERE "
                                               "study_name = :n"), {"n": study}).scalar()
            number: dict[int, int] = dict(conn.execute(sqlalchemy.text(
                "SELECT trial_id, number FROM trials WHERE study_id = :s"), {"s": sid}).all())
            found = {}
            for table in TRIAL_TABLES:
                rows = [dict(r._mapping) for r in conn.execute(sqlalchemy.select(table).where(
                    table.c.trial_id.in_(list(number))))]
                found[table.name] = sorted(
                    tuple(number[v] if k == "trial_id" else ("study" if v == sid else v)
                          if k == "study_id" else v for k, v in row.items()) for row in rows)
            found[checkpoints.name] = sorted(
                (r.number, r.epoch, bytes(r.state)) for r in conn.execute(
                    sqlalchemy.select(checkpoints).where(checkpoints.c.study_id == sid)))
    finally:
        engine.dispose()
    return found


def _read_back(url: str, study: str) -> dict[str, Any]:
    """What the query commands show of the study: best, and every trial's curves."""
    best = _invoke(["best", "--study", study, "--storage", url, "--format", "json"])
    assert best.exit_code == 0, best.output
    numbers = [str(t.number) for t in optuna.load_study(
        study_name=study, storage=url.replace("postgresql://", "postgresql+psycopg://")).trials]
    curves = _invoke(["curves", "--study", study, "--storage", url, "--format", "json",
                      *[a for n in numbers for a in ("--trial", n)]])
    assert curves.exit_code == 0, curves.output
    return {"best": json.loads(best.stdout), "curves": json.loads(curves.stdout)}


def _optuna_view(url: str, study: str) -> list[tuple[Any, ...]]:
    loaded = optuna.load_study(study_name=study, storage=url.replace(
        "postgresql://", "postgresql+psycopg://"))
    return [(t.number, t.state, t.value, t.params, t.intermediate_values, t.user_attrs)
            for t in loaded.trials]


def _same_study(source: str, name: str, copy: str, new_name: str) -> None:
    rows = _rows(source, name)
    assert all(rows[t.name] for t in (*TRIAL_TABLES, checkpoints)), rows  # every table had rows
    assert _rows(copy, new_name) == rows
    before, after = _read_back(source, name), _read_back(copy, new_name)
    assert after == before
    best = after["best"][0]
    assert best["seed"] is not None and best["best_epoch"] is not None
    assert best["test_metric"] is not None
    assert {row["train_loss"] for row in after["curves"]} - {None}
    assert _optuna_view(copy, new_name) == _optuna_view(source, name)


def test_sqlite_to_sqlite_with_the_tuners_rows(source: str, tmp_path: Path) -> None:
    copy = f"sqlite:///{tmp_path / 'copy.db'}"
    _run(TunerStorage(copy, heartbeat=False).open(), "filler", 3)  # ids taken there too
    result = _invoke(["copy", "--from", source, "--to", copy, "--study", "reg"])
    assert result.exit_code == 0, result.output
    rows = _rows(source, "reg")
    models = len(rows["tuner_models"])
    assert (f"5 trials, {len(rows['tuner_epochs'])} epoch rows, {models} "
            f"model{'s' if models > 1 else ''}, 1 checkpoint.") in result.stdout
    _same_study(source, "reg", copy, "reg")


def test_the_copy_resumes_there(source: str, tmp_path: Path) -> None:
    copy = f"sqlite:///{tmp_path / 'copy.db'}"
    assert _invoke(["copy", "--from", source, "--to", copy, "--study", "reg"]).exit_code == 0
    storage = TunerStorage(copy, heartbeat=False).open()
    _run(storage, "reg", 5)  # the stored space's fingerprint matches: resumed, not refused
    trials = optuna.load_study(study_name="reg", storage=copy).trials
    assert trials[4].params == {"lr": 0.02} and trials[4].state.name == "COMPLETE"


def test_as_a_new_name_in_the_same_database(source: str, tmp_path: Path) -> None:
    url = _clone(source, tmp_path / "local.db")
    result = _invoke(["copy", "--from", url, "--to", url, "--study", "reg", "--as", "reg-2"])
    assert result.exit_code == 0, result.output
    assert "as 'reg-2'" in result.stdout
    _same_study(url, "reg", url, "reg-2")


def _clone(url: str, path: Path) -> str:
    """A copy of a SQLite database (its write-ahead log included), for a test to change."""
    with sqlite3.connect(url.removeprefix("sqlite:///")) as original, \
            sqlite3.connect(path) as clone:
        original.backup(clone)
    return f"sqlite:///{path}"


def _one_line_error(result: Result, code: int, fragment: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: ") and fragment in line, line


def test_an_existing_name_is_refused_and_nothing_changes(source: str, tmp_path: Path,
                                                         db_snapshot: Snapshot) -> None:
    path = tmp_path / "copy.db"
    copy = f"sqlite:///{path}"
    assert _invoke(["copy", "--from", source, "--to", copy, "--study", "reg"]).exit_code == 0
    before = db_snapshot(path)
    again = _invoke(["copy", "--from", source, "--to", copy, "--study", "reg"])
    _one_line_error(again, 2, "already has a study 'reg'; copy it under another name with --as")
    assert db_snapshot(path) == before


def test_a_missing_study_creates_no_database(source: str, tmp_path: Path) -> None:
    path = tmp_path / "copy.db"
    result = _invoke(["copy", "--from", source, "--to", f"sqlite:///{path}", "--study", "nope"])
    _one_line_error(result, 2, "no study 'nope' in sqlite:///")
    assert "studies there: first, reg" in result.stderr
    assert not path.exists()


def test_a_running_study_is_refused(source: str, tmp_path: Path) -> None:
    url = _clone(source, tmp_path / "local.db")
    optuna.load_study(study_name="first", storage=url).ask()  # a trial left RUNNING
    path = tmp_path / "copy.db"
    result = _invoke(["copy", "--from", url, "--to", f"sqlite:///{path}", "--study", "first"])
    _one_line_error(result, 2, "study 'first' has 1 running trial; copy it once its workers")
    assert not path.exists()


def test_a_failure_leaves_no_half_copied_study(source: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import tuner.storage._copy as module

    def broken(*args: Any) -> Any:
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(module, "_copy_rows", broken)
    copy = f"sqlite:///{tmp_path / 'copy.db'}"
    with pytest.raises(RuntimeError, match="the disk is full"):
        copy_study(TunerStorage(source, create=False, heartbeat=False).open(),
                   TunerStorage(copy, heartbeat=False), "reg")
    assert optuna.get_all_study_names(storage=copy) == []


# --- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture
def pg_name(pg_url: str) -> Iterator[str]:
    """A unique study name on the server; the study and its tuner rows are deleted after."""
    name = f"copy-{uuid.uuid4().hex[:10]}"
    yield name
    storage = TunerStorage(pg_url, heartbeat=False).open()
    with contextlib.suppress(KeyError):
        study_id = storage.optuna.get_study_id_from_name(name)
        with storage.session() as conn:
            ids = sqlalchemy.select(TrialModel.trial_id).where(TrialModel.study_id == study_id)
            for table in TRIAL_TABLES:
                conn.execute(table.delete().where(table.c.trial_id.in_(ids)))
            conn.execute(checkpoints.delete().where(checkpoints.c.study_id == study_id))
        optuna.delete_study(study_name=name, storage=storage.optuna)
    storage.engine.dispose()


@pytest.mark.postgres
@pytest.mark.slow
def test_sqlite_to_postgresql_with_the_tuners_rows(source: str, pg_url: str,
                                                   pg_name: str) -> None:
    result = _invoke(["copy", "--from", source, "--to", pg_url, "--study", "reg",
                      "--as", pg_name])
    assert result.exit_code == 0, result.output
    _same_study(source, "reg", pg_url, pg_name)
    # And back: PostgreSQL to SQLite gives the same rows again.
    again = _invoke(["copy", "--from", pg_url, "--to", source.replace("source.db", "back.db"),
                     "--study", pg_name, "--as", "reg"])
    assert again.exit_code == 0, again.output
    _same_study(source, "reg", source.replace("source.db", "back.db"), "reg")
