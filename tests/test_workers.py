"""Many workers, one database: real processes, real signals, real databases.

Heartbeats are shortened (TUNER_HEARTBEAT_INTERVAL=1, TUNER_GRACE_PERIOD=3) so that
a killed worker's trial is found stale within seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from optuna.trial import TrialState

pytestmark = pytest.mark.slow

FAST = {"TUNER_HEARTBEAT_INTERVAL": "1", "TUNER_GRACE_PERIOD": "3"}


def tiny_space(tmp_path: Path, epochs: int = 3, hidden: int = 16) -> Path:
    space = {
        "trials": 10,
        "task": {"dataset": "iris", "model": "mlp", "epochs": epochs},
        "pruner": {"name": "none"},
        "sampler": {"name": "random"},
        "params": {"hidden": hidden, "layers": 1, "lr": {"low": 1e-3, "high": 1e-1, "log": True}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def slow_space(tmp_path: Path, epochs: int = 1500) -> Path:
    """Trials of several seconds (the engine does ~100 digits epochs a second): many
    epochs, no early stopping, no pruning."""
    space = {
        "trials": 3,
        "task": {"dataset": "digits", "model": "mlp", "epochs": epochs},
        "pruner": {"name": "none"},
        "sampler": {"name": "random"},
        "params": {"hidden": 64, "layers": 2, "batch_size": 32,
                   "lr": {"low": 1e-4, "high": 1e-3, "log": True}},
    }
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def tuner(*args: str, env: dict[str, str] | None = None, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tuner", *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, **FAST, **(env or {})}, **kwargs)  # type: ignore[call-overload]


def states(url: str, study: str) -> dict[TrialState, int]:
    counts = dict.fromkeys(TrialState, 0)
    try:
        # Read only: a storage that may create tables would race the worker creating them.
        storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
        try:
            trials = optuna.load_study(study_name=study, storage=storage).get_trials(
                deepcopy=False)
        finally:
            storage.engine.dispose()
    except (KeyError, sqlalchemy.exc.SQLAlchemyError,
            optuna.exceptions.StorageInternalError):  # not created yet, or being created
        return counts
    for trial in trials:
        counts[trial.state] += 1
    return counts


def wait_for(condition, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


@pytest.mark.parametrize(("backend", "engine"), [("sqlite", "sequential"),
                                               ("postgres", "sequential"),
                                               ("sqlite", "fused"), ("postgres", "fused")])
def test_workers_reach_exactly_the_budget(backend: str, engine: str, tmp_path: Path,
                                          request: pytest.FixtureRequest) -> None:
    if backend == "postgres":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'tuner.db'}"
    study = f"budget-{uuid.uuid4().hex[:8]}"
    # Fused workers claim up to 5 trials at once: the claims must still stop at 12.
    fused = ["--engine", "fused", "--population", "5"] if engine == "fused" else []
    proc = tuner("start", "--space", str(tiny_space(tmp_path)), "--study", study,
                 "--storage", url, "--trials", "12", "--workers", "3", "--quiet", *fused)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    counts = states(url.replace("postgresql://", "postgresql+psycopg://"), study)
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == 12
    assert counts[TrialState.RUNNING] == 0
    assert "database is locked" not in out


def test_kill_9_loses_no_trial_and_the_retry_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    args = ["start", "--space", str(slow_space(tmp_path)), "--study", "crash", "--storage", url,
            "--trials", "2", "--quiet"]
    engine = sqlalchemy.create_engine(url)

    def checkpointed_epochs() -> int:
        with engine.connect() as conn:
            try:
                value = conn.execute(sqlalchemy.text(
                    "SELECT MAX(epoch) FROM tuner_checkpoints")).scalar()
            except sqlalchemy.exc.OperationalError:
                return 0
        return int(value or 0)

    victim = tuner(*args, "--checkpoint-every", "0")  # a checkpoint after every epoch
    wait_for(lambda: checkpointed_epochs() >= 3, timeout=120)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    before = states(url, "crash")
    assert before[TrialState.RUNNING] == 1  # left behind by the dead worker

    survivor = tuner(*args)
    out, _ = survivor.communicate(timeout=600)
    assert survivor.returncode == 0, out
    study = optuna.load_study(study_name="crash", storage=url)
    trials = study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    done = [t for t in trials if t.state.is_finished() and t.state != TrialState.FAIL]
    assert len(done) == 2 and len(failed) == 1
    retry = next(t for t in done if t.system_attrs.get("failed_trial") == failed[0].number)
    resumed = retry.user_attrs["resumed_from_epoch"]
    assert resumed >= 3
    # The retried trial's curve continues where the killed one stopped.
    for epoch in range(1, resumed + 1):
        assert retry.intermediate_values[epoch] == failed[0].intermediate_values[epoch]
    assert retry.params == failed[0].params
    engine.dispose()


def test_kill_9_of_a_fused_worker_fails_and_retries_its_members_from_their_checkpoints(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    args = ["start", "--space", str(slow_space(tmp_path, epochs=600)), "--study", "crash",
            "--storage", url, "--trials", "3", "--engine", "fused", "--population", "3",
            "--quiet"]
    engine = sqlalchemy.create_engine(url)

    def checkpointed() -> list[int]:
        with engine.connect() as conn:
            try:
                return [int(e) for e, in conn.execute(sqlalchemy.text(
                    "SELECT epoch FROM tuner_checkpoints"))]
            except sqlalchemy.exc.OperationalError:
                return []

    victim = tuner(*args, "--checkpoint-every", "0")  # every member, after every epoch
    wait_for(lambda: len(checkpointed()) == 3 and min(checkpointed()) >= 3, timeout=120)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    assert states(url, "crash")[TrialState.RUNNING] == 3  # left behind by the dead worker

    survivor = tuner(*args)
    out, _ = survivor.communicate(timeout=600)
    assert survivor.returncode == 0, out
    trials = optuna.load_study(study_name="crash", storage=url).get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    # The three members were found stale, failed, and retried with their parameters,
    # each resumed from its checkpoint: its curve goes on from the dead one's.
    assert len(failed) == 3 and len(done) == 3
    for dead in failed:
        retry = next(t for t in done if t.system_attrs.get("failed_trial") == dead.number)
        assert retry.params == dead.params
        assert sorted(retry.intermediate_values) == list(range(1, 601))
        resumed = retry.user_attrs["resumed_from_epoch"]
        assert resumed >= 3
        for epoch in range(1, resumed + 1):
            assert retry.intermediate_values[epoch] == dead.intermediate_values[epoch]
    assert checkpointed() == []  # deleted once their trials finished
    engine.dispose()


def test_sigint_stops_every_worker_and_leaves_the_study_resumable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    # Trials long enough that both workers are caught in one even if the second is slow
    # to start (a spawned process importing torch on a loaded machine); they are stopped.
    args = ["start", "--space", str(slow_space(tmp_path, epochs=20_000)), "--study", "stop",
            "--storage", url, "--trials", "3", "--workers", "2", "--quiet"]
    # Default heartbeats here: on a loaded machine a 3 s grace can expire mid-trial.
    proc = tuner(*args, start_new_session=True, env={"TUNER_GRACE_PERIOD": "20"})
    wait_for(lambda: (tmp_path / "tuner.db").exists() and
             states(url, "stop")[TrialState.RUNNING] == 2, timeout=120)
    time.sleep(1)  # let both trials get into training
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    out, _ = proc.communicate(timeout=30)
    assert time.monotonic() - started < 15
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    counts = states(url, "stop")
    assert counts[TrialState.RUNNING] == 0
    assert counts[TrialState.FAIL] == 2
    assert counts[TrialState.WAITING] == 2  # queued again, for the next run to resume
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] < 3
    assert out.strip().splitlines()[-1].startswith("Interrupted: the trials that were running")


def test_worker_joins_a_study_from_the_database_alone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    space = tiny_space(tmp_path)
    first = tuner("start", "--space", str(space), "--study", "join", "--storage", url,
                  "--trials", "2", "--quiet")
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 0, out
    # Raise the budget; a worker that knows only the URL and the name does the rest.
    optuna.load_study(study_name="join", storage=url).set_user_attr("tuner:budget", 5)
    space.unlink()
    worker = tuner("worker", "--study", "join", "--storage", url, "--trials", "2", "--quiet")
    out, _ = worker.communicate(timeout=120)
    assert worker.returncode == 0, out
    counts = states(url, "join")
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == 4  # capped by --trials
    rest = tuner("worker", "--study", "join", "--storage", url, "--quiet")
    out, _ = rest.communicate(timeout=120)
    assert rest.returncode == 0, out
    counts = states(url, "join")
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == 5


def test_stale_trial_is_failed_and_retried_in_process(tmp_path: Path) -> None:
    """The heartbeat path without processes: a RUNNING trial with an old heartbeat."""
    import torch

    from tuner.run.runner import run_study
    from tuner.space import load_space
    from tuner.storage import TunerStorage

    storage = TunerStorage(f"sqlite:///{tmp_path / 'tuner.db'}", heartbeat_interval=1,
                           grace_period=3).open()
    space = load_space(tiny_space(tmp_path))
    run_study(space, storage=storage, study_name="stale", budget=1, device=torch.device("cpu"))
    study = optuna.load_study(study_name="stale", storage=storage.optuna)
    orphan = study.ask()  # a trial whose worker "died": it never beats again
    storage.optuna.record_heartbeat(orphan._trial_id)
    time.sleep(4)
    summary = run_study(space, storage=storage, study_name="stale", budget=2,
                        device=torch.device("cpu"))
    assert summary.finished == 2
    frozen = study.get_trials(deepcopy=False)
    assert frozen[orphan.number].state == TrialState.FAIL
    retried = [t for t in frozen if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retried) == 1 and retried[0].state.is_finished()
