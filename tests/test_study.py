"""Running, resuming and reading back studies, checked against Optuna's own API."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState
from sqlalchemy import create_engine, text

from tuner.errors import StudyMismatchError, StudyNotFoundError
from tuner.run.runner import RunSummary, run_study
from tuner.run.study import (
    FINGERPRINT_ATTR,
    NAME_ATTR,
    SPACE_ATTR,
    open_study,
    require_study,
    stored_space,
)
from tuner.space import Space, load_space
from tuner.storage import TunerStorage
from tuner.train.seeding import trial_seed

CPU = torch.device("cpu")


@pytest.fixture
def storage(storage_url: str) -> TunerStorage:
    return TunerStorage(storage_url).open()


@pytest.fixture
def space(tiny_path: Path) -> Space:
    return load_space(tiny_path)


def _run(space: Space, storage: TunerStorage, budget: int, name: str = "tiny",
         **kwargs: Any) -> RunSummary:
    return run_study(space, storage=storage, study_name=name, budget=budget, device=CPU,
                     **kwargs)


def _states(url: str, name: str = "tiny") -> list[TrialState]:
    study = optuna.load_study(study_name=name, storage=url)
    return [t.state for t in study.get_trials(deepcopy=False)]


def _epoch_rows(url: str, name: str) -> list[tuple[int, int, float | None]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(
                "SELECT t.number, e.epoch, e.val_metric FROM tuner_epochs e "
                "JOIN trials t ON t.trial_id = e.trial_id "
                "JOIN studies s ON s.study_id = t.study_id "
                "WHERE s.study_name = :name ORDER BY t.number, e.epoch"), {"name": name})]
    finally:
        engine.dispose()


def _trial_rows(url: str, name: str) -> dict[int, dict[str, Any]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT t.number, i.seed, i.best_epoch, i.epochs_run, i.outcome, i.device, "
                "i.test_metric FROM tuner_trials i "
                "JOIN trials t ON t.trial_id = i.trial_id "
                "JOIN studies s ON s.study_id = t.study_id "
                "WHERE s.study_name = :name"), {"name": name})
            return {r.number: dict(r._mapping) for r in rows}
    finally:
        engine.dispose()


# --- the budget -----------------------------------------------------------------------------


def test_run_reaches_exactly_the_budget(space: Space, storage: TunerStorage,
                                        storage_url: str) -> None:
    summary = _run(space, storage, budget=3)
    assert summary.stop_reason == "budget"
    assert (summary.finished_before, summary.finished, summary.ran) == (0, 3, 3)
    assert summary.budget == 3
    states = _states(storage_url)
    assert len(states) == 3
    assert all(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
    assert summary.pruned == states.count(TrialState.PRUNED)
    assert summary.failed == 0


def test_rerun_with_the_same_budget_runs_nothing(space: Space, storage: TunerStorage,
                                                 storage_url: str) -> None:
    _run(space, storage, budget=3)
    again = _run(space, storage, budget=3)
    assert again.stop_reason == "already_done"
    assert (again.finished_before, again.finished, again.ran) == (3, 3, 0)
    assert len(_states(storage_url)) == 3
    # A smaller budget than what is done also runs nothing.
    smaller = _run(space, storage, budget=2)
    assert smaller.stop_reason == "already_done" and smaller.ran == 0
    assert len(_states(storage_url)) == 3


def test_raising_the_budget_runs_only_the_difference(space: Space, storage: TunerStorage,
                                                     storage_url: str) -> None:
    _run(space, storage, budget=2)
    more = _run(space, storage, budget=4)
    assert more.stop_reason == "budget"
    assert (more.finished_before, more.finished, more.ran) == (2, 4, 2)
    assert [t.number for t in optuna.load_study(study_name="tiny", storage=storage_url)
            .get_trials()] == [0, 1, 2, 3]


def test_pruned_trials_count_against_the_budget(tiny_space: dict[str, Any], write_space: Any,
                                                storage: TunerStorage, storage_url: str) -> None:
    # No tiny network reaches 100% validation accuracy on iris after one epoch,
    # so every trial is pruned at its first report.
    tiny_space["pruner"] = {"name": "threshold", "lower": 1.01}
    space = load_space(write_space(tiny_space))
    summary = _run(space, storage, budget=3)
    assert (summary.finished, summary.pruned, summary.stop_reason) == (3, 3, "budget")
    assert summary.best is None
    assert _states(storage_url) == [TrialState.PRUNED] * 3
    rows = _trial_rows(storage_url, "tiny")
    assert {r["outcome"] for r in rows.values()} == {"pruned"}
    assert {r["epochs_run"] for r in rows.values()} == {1}
    again = _run(space, storage, budget=3)
    assert again.stop_reason == "already_done"


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_a_running_trial_holds_its_slot(space: Space, storage: TunerStorage,
                                        storage_url: str) -> None:
    """A trial running on another worker counts against the budget: this worker runs
    only the rest, and does not start one more while the other is still running."""
    study = open_study(storage, space, "tiny")
    elsewhere = study.ask()  # a trial running on another worker (no heartbeat: not stale)
    done = threading.Event()

    def other_worker() -> None:
        # Finish the other worker's trial once this worker has run its share.
        other = optuna.load_study(study_name="tiny", storage=storage_url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = [t.state for t in other.get_trials(deepcopy=False)]
            if states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) >= 2:
                other.tell(elsewhere.number, 0.0)
                break
            time.sleep(0.05)
        done.set()

    thread = threading.Thread(target=other_worker, daemon=True)
    thread.start()
    summary = _run(space, storage, budget=3, timeout=60)
    thread.join(timeout=65)
    assert done.is_set()
    assert summary.ran == 2
    assert summary.finished == 3
    states = _states(storage_url)
    assert len(states) == 3
    assert states.count(TrialState.RUNNING) == 0


def test_grid_budget_is_capped_at_the_grid(tiny_space: dict[str, Any], write_space: Any,
                                           storage: TunerStorage, storage_url: str) -> None:
    tiny_space["sampler"] = {"name": "grid"}
    tiny_space["params"] = {"hidden": 16, "layers": 1, "lr": 0.01,
                            "optimizer": {"choices": ["adam", "sgd"]}}
    space = load_space(write_space(tiny_space))
    summary = _run(space, storage, budget=10)
    assert summary.budget == 2 and summary.finished == 2
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    assert sorted(t.params["optimizer"] for t in study.trials) == ["adam", "sgd"]


def test_timeout_stops_before_the_budget(space: Space, storage: TunerStorage) -> None:
    summary = _run(space, storage, budget=50, timeout=1e-6)
    assert summary.stop_reason == "timeout"
    assert summary.finished < 50


# --- resuming with another space ------------------------------------------------------------


def test_different_space_for_the_same_study_is_refused(
        space: Space, storage: TunerStorage, storage_url: str, db_path: Path,
        tiny_space: dict[str, Any], write_space: Any, db_snapshot: Any) -> None:
    _run(space, storage, budget=2)
    before = db_snapshot(db_path)
    tiny_space["params"]["lr"] = {"low": 1e-4, "high": 1e-1, "log": True}
    other = load_space(write_space(tiny_space, name="other"))
    with pytest.raises(StudyMismatchError) as info:
        _run(other, storage, budget=4, name="tiny")
    message = str(info.value)
    assert "'tiny'" in message and "different search space" in message
    assert len(_states(storage_url)) == 2
    assert db_snapshot(db_path) == before


def test_changed_options_for_the_same_study_are_refused(space: Space, storage: TunerStorage,
                                                        tiny_path: Path,
                                                        storage_url: str) -> None:
    _run(space, storage, budget=1)
    with pytest.raises(StudyMismatchError):
        _run(load_space(tiny_path, overrides={"epochs": 3}), storage, budget=2)
    with pytest.raises(StudyMismatchError):
        _run(load_space(tiny_path, overrides={"seed": 1}), storage, budget=2)
    assert len(_states(storage_url)) == 1
    # The same file with another budget is the same study: it resumes.
    assert _run(load_space(tiny_path), storage, budget=2).ran == 1


def test_study_not_created_by_tuner_is_refused(space: Space, storage: TunerStorage,
                                               storage_url: str) -> None:
    optuna.create_study(study_name="foreign", storage=storage_url, direction="maximize")
    with pytest.raises(StudyMismatchError, match="not created by tuner"):
        _run(space, storage, budget=1, name="foreign")
    assert _states(storage_url, "foreign") == []


def test_same_space_under_another_name_is_another_study(space: Space, storage: TunerStorage,
                                                        storage_url: str) -> None:
    _run(space, storage, budget=1, name="first")
    _run(space, storage, budget=1, name="second")
    names = [s.study_name for s in optuna.get_all_study_summaries(storage=storage_url)]
    assert names == ["first", "second"]


# --- read back with Optuna's API ------------------------------------------------------------


def test_study_reads_back_with_optuna(space: Space, storage: TunerStorage,
                                      storage_url: str) -> None:
    summary = _run(space, storage, budget=4)
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    trials = study.get_trials()
    assert len(trials) == summary.finished == 4
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE

    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete, "the tiny study should complete at least one trial"
    for t in trials:
        assert t.user_attrs["seed"] == trial_seed(space.seed, t.number)
        assert set(t.params) == ({"lr", "optimizer", "momentum"}
                                 if t.params["optimizer"] == "momentum" else {"lr", "optimizer"})
    assert study.best_value == max(t.value for t in complete)
    assert summary.best is not None
    assert summary.best.number == study.best_trial.number
    assert summary.best.value == study.best_value

    # The space and its fingerprint are stored with the study.
    attrs = study.user_attrs
    assert attrs[FINGERPRINT_ATTR] == space.fingerprint()
    assert attrs[NAME_ATTR] == "tiny"
    assert json.loads(attrs[SPACE_ATTR])["task"]["dataset"] == "iris"


def test_epoch_rows_match_optunas_intermediate_values(space: Space, storage: TunerStorage,
                                                      storage_url: str) -> None:
    _run(space, storage, budget=3)
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    rows = _epoch_rows(storage_url, "tiny")
    expected = [(t.number, step, value) for t in study.get_trials()
                for step, value in sorted(t.intermediate_values.items())]
    # No pruner and no early stopping: every trial runs every epoch, numbered from 1.
    assert len(rows) == 3 * space.task.epochs
    assert [(n, e) for n, e, _ in rows] == [(n, s) for n, s, _ in expected]
    for (_, _, val_metric), (_, _, reported) in zip(rows, expected, strict=True):
        assert val_metric == pytest.approx(reported, rel=1e-12)


def test_trial_rows_record_seed_best_epoch_and_test_metric(space: Space, storage: TunerStorage,
                                                           storage_url: str) -> None:
    summary = _run(space, storage, budget=3)
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    rows = _trial_rows(storage_url, "tiny")
    assert sorted(rows) == [0, 1, 2]
    for t in study.get_trials():
        row = rows[t.number]
        assert row["seed"] == t.user_attrs["seed"]
        assert row["device"] == "cpu"
        assert row["epochs_run"] == len(t.intermediate_values)
        if t.state == TrialState.COMPLETE:
            # The value is the best epoch's validation metric.
            assert t.value == pytest.approx(t.intermediate_values[row["best_epoch"]])
            assert t.value == pytest.approx(max(t.intermediate_values.values()))
    best = rows[study.best_trial.number]
    assert best["test_metric"] is not None and 0.0 <= best["test_metric"] <= 1.0
    assert summary.best_epoch == best["best_epoch"]
    assert summary.test_metric == pytest.approx(best["test_metric"])


def test_stored_space_rebuilds_the_same_space(space: Space, storage: TunerStorage) -> None:
    """A worker on another machine rebuilds the space from the database alone; it must
    be the very space the study was created with, or resuming from it is refused."""
    _run(space, storage, budget=1)
    rebuilt = stored_space(storage, "tiny")
    assert rebuilt.task == space.task
    assert {p.name: p for p in rebuilt.all_params()} == {p.name: p for p in space.all_params()}
    assert rebuilt.fingerprint() == space.fingerprint()
    # and it resumes the study
    assert _run(rebuilt, storage, budget=2).ran == 1


def test_stored_space_keeps_the_categorical_order(storage: TunerStorage) -> None:
    """Optuna refuses a categorical parameter whose choices change order between trials."""
    space = load_space("optimizers", overrides={"epochs": 1, "dataset": "iris"})
    study = open_study(storage, space, "optimizers")
    rebuilt = stored_space(storage, "optimizers")
    original = {p.name: p for p in space.all_params()}
    for p in rebuilt.all_params():
        if hasattr(p, "choices"):
            assert p.choices == original[p.name].choices, p.name
    assert study.study_name == "optimizers"


def test_unknown_study_lists_the_studies_there_are(space: Space, storage: TunerStorage) -> None:
    with pytest.raises(StudyNotFoundError, match="this database has no studies"):
        require_study(storage, "nope")
    _run(space, storage, budget=1)
    with pytest.raises(StudyNotFoundError, match=r"no study 'nope'.*studies here: tiny"):
        require_study(storage, "nope")


@pytest.mark.slow
def test_builtin_quick_space_runs_on_iris(storage: TunerStorage, storage_url: str) -> None:
    space = load_space("quick", overrides={"epochs": 2, "dataset": "iris"})
    summary = _run(space, storage, budget=3, name="quick")
    assert summary.finished == 3
    study = optuna.load_study(study_name="quick", storage=storage_url)
    for t in study.trials:
        assert ("momentum" in t.params) == (t.params["optimizer"] == "momentum")


def test_a_refused_resume_names_the_first_differences_and_counts_the_rest(
        runner, storage_url: str) -> None:  # type: ignore[no-untyped-def]
    from tuner.cli import cli

    first = runner.invoke(cli, ["start", "--space", "quick", "--study", "demo", "--trials", "1",
                                "--epochs", "1", "--storage", storage_url, "--quiet"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(cli, ["start", "--space", "optimizers", "--study", "demo",
                                "--trials", "1", "--epochs", "1", "--storage", storage_url,
                                "--quiet"])
    assert again.exit_code == 2
    line = again.output.strip()
    assert "\n" not in line
    assert "sampler was {'name': 'tpe', 'n_startup_trials': 5}, now {'name': 'tpe'," in line
    assert "; and " in line and " more; resume it with the same space and options" in line
