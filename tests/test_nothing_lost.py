"""Nothing lost: interrupted trials come back on resume, waiting retries are never
skipped, workers die with the command that started them, and the tuner's rows follow
whoever deletes a study (Optuna's CLI included)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from click.testing import CliRunner
from optuna.trial import TrialState

from tests.test_workers import slow_space, states, tiny_space, tuner, wait_for
from tuner.cli import cli
from tuner.errors import StorageUnavailable
from tuner.run.runner import claim
from tuner.run.study import open_study
from tuner.space import load_space
from tuner.storage import DATABASE_ERRORS, TunerStorage

pytestmark = pytest.mark.slow


def _checkpointed(url: str) -> int:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            value = conn.execute(sqlalchemy.text("SELECT MAX(epoch) FROM tuner_checkpoints")
                                 ).scalar()
    except sqlalchemy.exc.OperationalError:
        return 0
    finally:
        engine.dispose()
    return int(value or 0)


def _trials(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)


@pytest.mark.parametrize(("sig", "engine"), [(signal.SIGINT, "sequential"),
                                             (signal.SIGTERM, "sequential"),
                                             (signal.SIGINT, "fused")])
def test_an_interrupted_trial_is_queued_again_and_resumes_from_its_checkpoint(
        tmp_path: Path, sig: signal.Signals, engine: str) -> None:
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    args = ["start", "--space", str(slow_space(tmp_path, epochs=300)), "--study", "stop",
            "--storage", url, "--trials", "1", "--engine", engine, "--quiet"]
    if engine == "fused":
        args += ["--population", "2"]
    proc = tuner(*args, "--checkpoint-every", "0")  # a checkpoint after every epoch
    wait_for(lambda: _checkpointed(url) >= 3, timeout=120)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    # The last line says how to resume: the same command.
    assert out.strip().splitlines()[-1].endswith(
        "Resume with: tuner " + " ".join([*args, "--checkpoint-every", "0"]))
    trials = _trials(url, "stop")
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert stopped and len(queued) == len(stopped)
    for dead in stopped:
        retry = next(t for t in queued if t.system_attrs["failed_trial"] == dead.number)
        assert retry.params == dead.params

    again = tuner(*args)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out
    trials = _trials(url, "stop")
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    # The retries ran, before anything new was sampled; each resumed its checkpoint.
    assert {t.number for t in done} >= {t.number for t in queued}
    for retry in (t for t in done if t.number in {q.number for q in queued}):
        dead = next(t for t in stopped if t.number == retry.system_attrs["failed_trial"])
        assert retry.params == dead.params
        resumed = retry.user_attrs["resumed_from_epoch"]
        assert resumed >= 3
        for epoch in range(1, resumed + 1):
            assert retry.intermediate_values[epoch] == dead.intermediate_values[epoch]


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_killing_the_parent_of_workers_stops_them_and_queues_their_trials(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    args = ["start", "--space", str(slow_space(tmp_path, epochs=20_000)), "--study", "orphan",
            "--storage", url, "--trials", "3", "--workers", "2", "--quiet"]
    parent = tuner(*args, env={"TUNER_GRACE_PERIOD": "20"})
    wait_for(lambda: (tmp_path / "tuner.db").exists() and
             states(url, "orphan")[TrialState.RUNNING] == 2, timeout=120)
    workers = _children(parent.pid)
    assert len(workers) >= 2
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    wait_for(lambda: not any(_alive(pid) for pid in workers), timeout=60)
    counts = states(url, "orphan")
    assert counts[TrialState.RUNNING] == 0
    assert counts[TrialState.FAIL] == 2 and counts[TrialState.WAITING] == 2


def _study(tmp_path: Path, tiny: Path, name: str = "s") -> tuple[TunerStorage, optuna.Study]:
    storage = TunerStorage(f"sqlite:///{tmp_path / 'claims.db'}").open()
    return storage, open_study(storage, load_space(tiny), name)


def _complete(study: optuna.Study, n: int) -> None:
    for _ in range(n):
        trial = study.ask()
        study.tell(trial, 0.5)


def test_a_waiting_trial_is_claimed_first_and_keeps_a_full_study_going(
        tmp_path: Path) -> None:
    storage, study = _study(tmp_path, tiny_space(tmp_path))
    _complete(study, 2)
    study.enqueue_trial({"lr": 0.01})
    # The budget is full (2 of 2 finished), but a trial waits: it is claimed, not FULL.
    claimed = claim(study, storage, budget=2)
    assert isinstance(claimed, list) and len(claimed) == 1
    assert claimed[0].number == 2
    assert claimed[0].suggest_float("lr", 1e-3, 1e-1, log=True) == 0.01
    study.tell(claimed[0], 0.7)
    assert str(claim(study, storage, budget=2)) == "Claim.FULL"


def test_a_waiting_trial_holds_its_slot_of_the_budget(tmp_path: Path) -> None:
    storage, study = _study(tmp_path, tiny_space(tmp_path))
    _complete(study, 1)
    study.enqueue_trial({"lr": 0.02})
    # Budget 3: one finished, one waiting, so room for one fresh trial besides it.
    claimed = claim(study, storage, budget=3, n=5)
    assert isinstance(claimed, list) and len(claimed) == 2
    assert claimed[0].number == 1  # the waiting one first
    assert claimed[0].suggest_float("lr", 1e-3, 1e-1, log=True) == 0.02
    assert claimed[1].number == 2
    counts = {s: len(study.get_trials(states=(s,))) for s in TrialState}
    assert counts[TrialState.RUNNING] == 2 and counts[TrialState.WAITING] == 0


def test_a_stale_trial_is_retried_before_a_fresh_claim_can_take_its_slot(
        tmp_path: Path) -> None:
    """The stale trial is failed and its retry queued under the claim lock: the claim
    that finds it stale takes the retry, not a fresh trial (budget 1: one slot)."""
    storage = TunerStorage(f"sqlite:///{tmp_path / 'stale.db'}", heartbeat_interval=1,
                           grace_period=1).open()
    study = open_study(storage, load_space(tiny_space(tmp_path)), "stale")
    dead = study.ask()
    dead.suggest_float("lr", 1e-3, 1e-1, log=True)
    storage.optuna.record_heartbeat(dead._trial_id)
    time.sleep(2.5)  # its heartbeat goes stale
    claimed = claim(study, storage, budget=1)
    assert isinstance(claimed, list) and len(claimed) == 1
    frozen = storage.optuna.get_trial(claimed[0]._trial_id)
    assert frozen.system_attrs["failed_trial"] == dead.number
    assert frozen.params == {"lr": dead.params["lr"]}


def test_optuna_delete_study_takes_the_tuners_rows_with_it(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    url = f"sqlite:///{db}"
    space = str(tiny_space(tmp_path))
    for name in ("old", "keep"):
        run = tuner("start", "--space", space, "--study", name, "--storage", url,
                    "--trials", "3", "--quiet")
        out, _ = run.communicate(timeout=300)
        assert run.returncode == 0, out
    optuna_cli = str(Path(sys.executable).with_name("optuna"))
    deleted = subprocess.run([optuna_cli, "delete-study", "--storage", url,
                              "--study-name", "old"], capture_output=True, text=True, timeout=120)
    assert deleted.returncode == 0, deleted.stderr
    with sqlite3.connect(db) as conn:
        for table in ("tuner_epochs", "tuner_trials", "tuner_models", "tuner_epoch_metrics"):
            orphans = conn.execute(f"SELECT COUNT(*) FROM {table} WHERE trial_id NOT IN "
                                   "(SELECT trial_id FROM trials)").fetchone()[0]
            assert orphans == 0, table
        kept = conn.execute("SELECT COUNT(*) FROM tuner_trials").fetchone()[0]
    assert kept == 3  # the other study's rows stay
    # SQLite hands the freed trial ids out again: the new study's rows are its own.
    new = tuner("start", "--space", space, "--study", "new", "--storage", url, "--trials", "3",
                "--quiet")
    out, _ = new.communicate(timeout=300)
    assert new.returncode == 0, out
    trials = {t.number: t for t in _trials(url, "new")}
    assert all(t.state == TrialState.COMPLETE for t in trials.values())
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT number, seed, epochs_run FROM trial_summary "
                            "WHERE study = 'new'").fetchall()
        epochs = dict(conn.execute("SELECT number, COUNT(*) FROM epoch_summary "
                                   "WHERE study = 'new' GROUP BY number").fetchall())
    assert sorted((n, s, e) for n, s, e in rows) == sorted(
        (n, t.user_attrs["seed"], len(t.intermediate_values)) for n, t in trials.items())
    assert epochs == {n: len(t.intermediate_values) for n, t in trials.items()}


def _tuner_rows(url: str) -> dict[str, int]:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return {table: conn.execute(sqlalchemy.text(f"SELECT COUNT(*) FROM {table}")
                                        ).scalar_one()
                    for table in ("tuner_epochs", "tuner_trials", "tuner_checkpoints",
                                  "tuner_models", "trials")}
    finally:
        engine.dispose()


def test_tuner_delete_asks_and_removes_a_study_with_all_its_rows(
        tmp_path: Path, runner: CliRunner) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    space = str(tiny_space(tmp_path))
    for name in ("a", "b"):
        result = runner.invoke(cli, ["start", "--space", space, "--study", name,
                                     "--storage", url, "--trials", "2", "--quiet"])
        assert result.exit_code == 0, result.output
    before = _tuner_rows(url)
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        epochs_of_a = conn.execute(sqlalchemy.text(
            "SELECT COUNT(*) FROM epoch_summary WHERE study = 'a'")).scalar_one()
    engine.dispose()
    assert epochs_of_a > 0
    # No terminal to ask on, no --yes: refused in one line, nothing changed.
    refused = runner.invoke(cli, ["delete", "--study", "a", "--storage", url])
    assert refused.exit_code == 2
    assert refused.output.strip().splitlines() == [
        "Error: deleting a study needs a confirmation: run it in a terminal, or pass --yes"]
    assert _tuner_rows(url) == before
    done = runner.invoke(cli, ["delete", "--study", "a", "--storage", url, "--yes"])
    assert done.exit_code == 0, done.output
    assert "Deleted study 'a' (2 trials)" in done.output
    after = _tuner_rows(url)
    assert after["trials"] == before["trials"] - 2
    assert after["tuner_trials"] == before["tuner_trials"] - 2
    assert after["tuner_epochs"] == before["tuner_epochs"] - epochs_of_a
    assert optuna.get_all_study_names(storage=url) == ["b"]
    missing = runner.invoke(cli, ["delete", "--study", "a", "--storage", url, "--yes"])
    assert missing.exit_code == 2 and "no study 'a'" in missing.output


def test_tuner_delete_asks_on_a_terminal(tmp_path: Path, runner: CliRunner,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    result = runner.invoke(cli, ["start", "--space", str(tiny_space(tmp_path)), "--study",
                                 "a", "--storage", url, "--trials", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    monkeypatch.setattr("tuner.cli._database.can_ask", lambda: True)
    no = runner.invoke(cli, ["delete", "--study", "a", "--storage", url], input="n\n")
    assert no.exit_code != 0 and optuna.get_all_study_names(storage=url) == ["a"]
    yes = runner.invoke(cli, ["delete", "--study", "a", "--storage", url], input="y\n")
    assert yes.exit_code == 0, yes.output
    assert optuna.get_all_study_names(storage=url) == []


def test_postgres_deletion_cascades_to_the_tuners_rows(pg_url: str, tmp_path: Path,
                                                      runner: CliRunner) -> None:
    name = f"cascade-{os.getpid()}-{time.time_ns()}"
    result = runner.invoke(cli, ["start", "--space", str(tiny_space(tmp_path)), "--study",
                                 name, "--storage", pg_url, "--trials", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    storage = TunerStorage(pg_url).open()
    study_id = storage.optuna.get_study_id_from_name(name)
    ids = [t._trial_id for t in storage.optuna.get_all_trials(study_id)]

    def rows() -> int:
        with storage.session() as conn:
            return sum(conn.execute(sqlalchemy.text(
                f"SELECT COUNT(*) FROM {table} WHERE trial_id = ANY(:ids)"), {"ids": ids}
                ).scalar_one() for table in ("tuner_epochs", "tuner_trials", "tuner_models"))

    assert rows() > 0
    # Optuna's own deletion (what `optuna delete-study` and the dashboard run).
    optuna.delete_study(study_name=name, storage=pg_url.replace(
        "postgresql://", "postgresql+psycopg://", 1))
    assert rows() == 0
    storage.engine.dispose()


def test_a_constraint_error_is_not_taken_for_a_lost_database(tmp_path: Path,
                                                            runner: CliRunner) -> None:
    """Rows that clash with the tuner's (left by hand where no trial is yet) make the
    trial's record fail at once with the database's reason, not six tries at a
    "lost" database."""
    db = tmp_path / "c.db"
    url = f"sqlite:///{db}"
    space = str(tiny_space(tmp_path))
    first = runner.invoke(cli, ["start", "--space", space, "--study", "c", "--storage", url,
                                "--trials", "1", "--quiet"])
    assert first.exit_code == 0, first.output
    with sqlite3.connect(db) as conn:
        next_id = conn.execute("SELECT MAX(trial_id) + 1 FROM trials").fetchone()[0]
        conn.execute("INSERT INTO tuner_epochs (trial_id, epoch) VALUES (?, 1)", (next_id,))
    result = runner.invoke(cli, ["start", "--space", space, "--study", "c", "--storage", url,
                                 "--trials", "2", "--quiet"])
    assert result.exit_code == 1
    assert "UNIQUE constraint failed: tuner_epochs" in result.output
    assert "lost the study database" not in result.output
    assert "Traceback" not in result.output


def test_session_errors_are_sorted_into_retryable_and_not(tmp_path: Path) -> None:
    storage = TunerStorage(f"sqlite:///{tmp_path / 'e.db'}").open()
    with pytest.raises(Exception) as data_error, storage.session() as conn:
        conn.execute(sqlalchemy.text("INSERT INTO tuner_schema (version) VALUES (NULL)"))
    assert not isinstance(data_error.value, DATABASE_ERRORS)
    # The driver's operational errors (SQLite: a lock held too long, a file gone) are.
    with pytest.raises(StorageUnavailable), storage.session() as conn:
        conn.execute(sqlalchemy.text("SELECT * FROM no_such_table"))
    assert issubclass(StorageUnavailable, DATABASE_ERRORS)


def _rebuild(url: str) -> None:
    TunerStorage(url).open().engine.dispose()


def test_an_old_tuner_schema_is_brought_up_to_date(tmp_path: Path) -> None:
    """A database of the unversioned schema (no ties, orphans left by a deletion, an
    outdated view) is migrated when the tuner opens it for writing."""
    db = tmp_path / "v1.db"
    url = f"sqlite:///{db}"
    run = tuner("start", "--space", str(tiny_space(tmp_path)), "--study", "v1", "--storage",
                url, "--trials", "2", "--quiet")
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE tuner_schema")
        conn.execute("DROP TRIGGER tuner_trial_deleted")
        conn.execute("DROP VIEW trial_summary")
        conn.execute("CREATE VIEW trial_summary AS SELECT 1 AS outdated")
        conn.execute("INSERT INTO tuner_epochs (trial_id, epoch) VALUES (9999, 1)")
        conn.execute("INSERT INTO tuner_trials (trial_id, study_id, seed, epochs_run, outcome, "
                     "device) VALUES (9999, 1, 0, 1, 'completed', 'cpu')")
    _rebuild(url)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version FROM tuner_schema").fetchall() == [(2,)]
        assert conn.execute("SELECT COUNT(*) FROM tuner_epochs WHERE trial_id = 9999"
                            ).fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM tuner_trials WHERE trial_id = 9999"
                            ).fetchone() == (0,)
        columns = [c[1] for c in conn.execute("PRAGMA table_info(trial_summary)")]
        assert "params" in columns and "outdated" not in columns
        triggers = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert {"tuner_trial_deleted", "tuner_study_deleted"} <= triggers


def test_a_database_of_a_newer_tuner_is_refused(tmp_path: Path, runner: CliRunner) -> None:
    db = tmp_path / "new.db"
    url = f"sqlite:///{db}"
    _rebuild(url)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE tuner_schema SET version = 99")
    result = runner.invoke(cli, ["start", "--space", str(tiny_space(tmp_path)), "--study", "x",
                                 "--storage", url, "--trials", "1", "--quiet"])
    assert result.exit_code == 1
    assert "tuner schema version 99, newer than this tuner's 2" in result.output


def test_a_lock_file_that_cannot_be_opened_is_one_line(tmp_path: Path, runner: CliRunner,
                                                       db_snapshot) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "l.db"
    url = f"sqlite:///{db}"
    space = str(tiny_space(tmp_path))
    first = runner.invoke(cli, ["start", "--space", space, "--study", "l", "--storage", url,
                                "--trials", "1", "--quiet"])
    assert first.exit_code == 0, first.output
    lock = Path(f"{db}.lock")
    lock.unlink()
    lock.mkdir()  # what no one can open as a file (root ignores permission bits)
    before = db_snapshot(db)
    result = runner.invoke(cli, ["start", "--space", space, "--study", "l", "--storage", url,
                                 "--trials", "1", "--quiet"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: cannot open the lock file {lock} next to the study database: Is a directory; "
        "it must be writable by whoever runs trials on this database"]
    assert db_snapshot(db) == before


def test_workers_started_together_never_draw_the_same_configuration(tmp_path: Path) -> None:
    """Both workers load the study at the same count of trials: with one seed per
    process they drew the same parameters; seeded per trial number they cannot."""
    url = f"sqlite:///{tmp_path / 'w.db'}"
    run = tuner("start", "--space", str(tiny_space(tmp_path)), "--study", "twins", "--storage",
                url, "--trials", "6", "--workers", "2", "--quiet")
    out, _ = run.communicate(timeout=600)
    assert run.returncode == 0, out
    trials = _trials(url, "twins")
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2  # both took part
    drawn = [t.params["lr"] for t in trials]
    assert len(set(drawn)) == len(drawn)


def test_postgres_urls_in_heroku_spelling_are_accepted(pg_url: str) -> None:
    alias = pg_url.replace("postgresql://", "postgres://", 1)
    storage = TunerStorage(alias).open()
    assert storage.url.startswith("postgresql+psycopg://")
    assert isinstance(storage.study_names(), list)
    storage.engine.dispose()
