"""`tuner.run.start`: the one path of `tuner start` and `tuner.optimize`."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from tuner.errors import UsageError
from tuner.run.enqueue import check_params
from tuner.run.start import plan_start, space_with
from tuner.run.study import stored_budget
from tuner.space import load_space
from tuner.storage import TunerStorage


def test_a_space_object_takes_overrides_as_its_file_would(tiny_path: Path) -> None:
    from_file = space_with(tiny_path, {"epochs": 2, "seed": 5})
    from_object = space_with(load_space(tiny_path), {"epochs": 2, "seed": 5})
    assert from_object.task.epochs == 2 and from_object.seed == 5
    assert from_object.fingerprint() == from_file.fingerprint()
    unchanged = load_space(tiny_path)
    assert space_with(unchanged, {}) is unchanged


def test_a_plan_writes_nothing_and_defaults_to_the_space(tiny_path: Path,
                                                         db_path: Path) -> None:
    space = load_space(tiny_path)
    plan = plan_start(space, devices=["cpu"])
    assert (plan.study_name, plan.budget, plan.engine) == (space.name, space.trials,
                                                          space.engine)
    assert plan.devices == ("cpu",) and plan.warnings == ()
    assert not db_path.exists()


def test_a_name_no_study_may_have_is_refused_with_who_gave_it(tiny_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^--study: a study name must not be blank"):
        plan_start(load_space(tiny_path), devices=["cpu"], study_name=" ", name_source="--study")


def test_open_records_the_budget_and_the_queued_trials_once(tiny_path: Path,
                                                           storage_url: str) -> None:
    space = load_space(tiny_path)
    plan = plan_start(space, devices=["cpu"], study_name="s", budget=3)
    queued = [check_params(space, {"lr": 0.01, "optimizer": "adam"}, "--enqueue")]
    first = plan.open(storage_url, queued=queued)
    again = plan.open(storage_url, queued=queued)  # resumed: queued again only if new
    assert stored_budget(again.storage, "s") == 3
    assert [t.state for t in again.study.trials] == [TrialState.WAITING]
    summary = first.run()
    assert summary.finished == 3 and summary.study_name == "s"
    assert first.study.trials[0].params == {"lr": 0.01, "optimizer": "adam"}
    assert stored_budget(TunerStorage(storage_url, create=False).open(), "s") == 3
