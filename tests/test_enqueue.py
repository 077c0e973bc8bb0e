"""`tuner enqueue`: parameters checked against the study's space (as Optuna's
distributions would contain them), refused in one line without a write, and run first by
either engine with exactly those parameters."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
from click.testing import CliRunner, Result
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from tuner.cli import cli
from tuner.errors import UsageError
from tuner.run.enqueue import check_params, sampled_names
from tuner.space import load_space, parse_space

Snapshot = Callable[[Path], dict[str, list[tuple[Any, ...]]]]


@pytest.fixture(scope="module")
def catalogue() -> Any:
    """The built-in space with every kind of parameter: log and linear ranges, ints,
    boolean and null choices, conditionals sharing a name across branches (gamma)."""
    return load_space("regularization")


def test_a_full_configuration_is_accepted_as_the_trial_records_it(catalogue: Any) -> None:
    given = {"hidden": 128, "layers": 2.0, "batch_size": 64, "l1": 0, "l2": 1e-4,
             "dropout": 0.2, "dropout_kind": "gaussian", "batchnorm": True,
             "input_noise": 0.1, "augment": False, "max_norm": None, "lr": 0.01,
             "optimizer": "adamw", "beta1": 0.9, "weight_decay": 0.01,
             "schedule": "exponential", "gamma": 0.95}
    checked = check_params(catalogue, given)
    assert checked == given
    assert type(checked["layers"]) is int and type(checked["l1"]) is float
    assert sampled_names(catalogue, checked) == []
    # As a trial of the study would draw them: a FixedTrial answers the space's suggestions.
    values, _ = catalogue.sample(optuna.trial.FixedTrial(checked))
    assert {k: values[k] for k in checked} == checked


def test_a_name_in_several_branches_is_checked_in_the_branch_given(catalogue: Any) -> None:
    assert check_params(catalogue, {"schedule": "step", "gamma": 0.5})["gamma"] == 0.5
    with pytest.raises(UsageError, match=r"'gamma' must be in float \[0.9, 0.999\], but got 0.5"):
        check_params(catalogue, {"schedule": "exponential", "gamma": 0.5})


def test_the_rest_is_sampled(catalogue: Any) -> None:
    sampled = sampled_names(catalogue, {"optimizer": "momentum", "lr": 0.01})
    assert "momentum" in sampled and "hidden" in sampled
    assert "lr" not in sampled and "beta1" not in sampled and "gamma" not in sampled


@pytest.mark.parametrize(("params", "fragments"), [
    ({"nope": 1}, ["no parameter 'nope'", "it searches: hidden, layers"]),
    ({"lr": 0.5}, ["'lr' must be in float [0.0001, 0.3] log, but got 0.5"]),
    ({"lr": 0}, ["'lr' must be in float [0.0001, 0.3] log, but got 0"]),
    ({"lr": "0.01"}, ["'lr' must be a number in float [0.0001, 0.3] log, but got \"0.01\""]),
    ({"lr": True}, ["'lr' must be a number", "but got true"]),
    ({"hidden": 100.5}, ["'hidden' must be an integer in int [64, 512] log, but got 100.5"]),
    ({"layers": 4}, ["'layers' must be in int [1, 3], but got 4"]),
    ({"batch_size": 48}, ["'batch_size' must be one of 32, 64, 128, but got 48"]),
    ({"batchnorm": 1}, ["'batchnorm' must be one of False, True, but got 1"]),
    ({"optimizer": "lion"}, ["'optimizer' must be one of sgd, momentum"]),
    ({"momentum": 0.9}, ["'momentum' exists only when optimizer is 'momentum': give optimizer "
                         "too"]),
    ({"optimizer": "adam", "momentum": 0.9},
     ["'momentum' exists only when optimizer is 'momentum', but --params gives optimizer "
      "'adam'"]),
    ({"gamma": 0.5}, ["'gamma' exists only when schedule is 'step' or 'multistep' or "
                      "'exponential'"]),
    ({}, ["give at least one parameter"]),
])
def test_refusals_name_the_parameter_and_its_range(catalogue: Any, params: dict[str, Any],
                                                   fragments: Sequence[str]) -> None:
    with pytest.raises(UsageError) as caught:
        check_params(catalogue, params)
    message = str(caught.value)
    assert message.startswith("--params: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_fixed_parameters_and_steps() -> None:
    space = parse_space({"task": {"dataset": "iris"}, "params": {
        "hidden": 16, "dropout": {"low": 0.0, "high": 0.5, "step": 0.1},
        "layers": {"low": 1, "high": 5, "step": 2}}}, name="steps", source="steps")
    assert check_params(space, {"dropout": 0.3, "layers": 3}) == {"dropout": 0.3, "layers": 3}
    refused: list[tuple[dict[str, Any], str]] = [
        ({"hidden": 32}, "'hidden' is fixed at 16"),
        ({"dropout": 0.25}, "'dropout' must be in float [0, 0.5] step 0.1"),
        ({"layers": 2}, "'layers' must be in int [1, 5] step 2")]
    for params, fragment in refused:
        with pytest.raises(UsageError, match=fragment.replace("[", r"\[")):
            check_params(space, params)


@pytest.mark.parametrize("log", [False, True])
def test_ranges_agree_with_optunas_distributions(log: bool) -> None:
    space = parse_space({"task": {"dataset": "iris"}, "params": {
        "lr": {"low": 1e-3, "high": 1e-1, "log": log},
        "hidden": {"low": 8, "high": 64, "log": log}}}, name="ranges", source="ranges")
    floats = FloatDistribution(1e-3, 1e-1, log=log)
    ints = IntDistribution(8, 64, log=log)
    for value in [0.0, 9.99e-4, 1e-3, 0.05, 0.1, 0.1000001, 1.0, -0.01, math.pi / 100]:
        assert _accepted(space, {"lr": value}) == floats._contains(value), value
    for value in [7, 8, 9, 33, 64, 65, 0, -8]:
        assert _accepted(space, {"hidden": value}) == ints._contains(value), value


def _accepted(space: Any, params: dict[str, Any]) -> bool:
    try:
        check_params(space, params)
    except UsageError:
        return False
    return True


# --- the command, and the engines running what it queued --------------------------------------


def _invoke(args: Sequence[str]) -> Result:
    return CliRunner().invoke(cli, list(args))


def _start(space: Path, url: str, trials: int, *extra: str) -> Result:
    result = _invoke(["start", "--space", str(space), "--storage", url, "--device", "cpu",
                      "--quiet", "--trials", str(trials), *extra])
    assert result.exit_code == 0, result.output
    return result


def _enqueue(url: str, params: dict[str, Any] | str, study: str = "tiny") -> Result:
    text = params if isinstance(params, str) else json.dumps(params)
    return _invoke(["enqueue", "--study", study, "--storage", url, "--params", text])


def _queued_number(result: Result) -> int:
    assert result.exit_code == 0, result.output
    return int(result.stdout.split("Queued trial ", 1)[1].split()[0])


def test_start_runs_the_queued_trial_first_with_its_parameters(tiny_path: Path,
                                                              storage_url: str) -> None:
    _start(tiny_path, storage_url, 1)
    given = {"lr": 0.0421, "optimizer": "momentum", "momentum": 0.66}
    queued = _enqueue(storage_url, given)
    number = _queued_number(queued)
    assert number == 1
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.number for t in waiting] == [number]
    assert waiting[0].system_attrs["fixed_params"] == given
    assert "Sampled when it runs" not in queued.stdout  # every searched parameter given
    _start(tiny_path, storage_url, 3)
    trials = {t.number: t for t in optuna.load_study(study_name="tiny",
                                                      storage=storage_url).trials}
    assert trials[number].state == TrialState.COMPLETE
    assert trials[number].params == given
    assert len(trials) == 3


def test_the_fused_engine_runs_queued_trials_itself(tiny_path: Path, storage_url: str) -> None:
    _start(tiny_path, storage_url, 1)
    first = {"lr": 0.0123, "optimizer": "adam"}
    second = {"lr": 0.0777, "optimizer": "momentum", "momentum": 0.81}
    numbers = [_queued_number(_enqueue(storage_url, p)) for p in (first, second)]
    third = _enqueue(storage_url, {"optimizer": "momentum"})
    assert "Sampled when it runs: lr, momentum." in third.stdout
    _start(tiny_path, storage_url, 5, "--engine", "fused", "--population", "4")
    trials = {t.number: t for t in optuna.load_study(study_name="tiny",
                                                      storage=storage_url).trials}
    for number, given in zip(numbers, (first, second), strict=True):
        assert trials[number].state == TrialState.COMPLETE
        assert trials[number].params == given
        assert trials[number].user_attrs["engine"] == "fused"
    assert trials[3].params["optimizer"] == "momentum"  # the third queued: its choice fixed
    assert not [t for t in trials.values() if t.state == TrialState.WAITING]


@pytest.mark.parametrize(("text", "fragment"), [
    ('{"lr": 0.01,}', "--params is not valid JSON"),
    ('["lr"]', "--params must be a JSON object"),
    ('{"lr": 0.01, "lr": 0.02}', "'lr' is given twice"),
    ('{"lr": 2}', "'lr' must be in float [0.001, 0.1] log, but got 2"),
    ('{"dropout": 0.1}', "no parameter 'dropout'"),
])
def test_bad_params_change_nothing(tiny_path: Path, storage_url: str, db_path: Path,
                                   db_snapshot: Snapshot, text: str, fragment: str) -> None:
    _start(tiny_path, storage_url, 1)
    before = db_snapshot(db_path)
    result = _enqueue(storage_url, text)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: --params") and fragment in line, line
    assert db_snapshot(db_path) == before


def test_a_missing_study_or_database_is_one_line(tiny_path: Path, storage_url: str,
                                                 db_path: Path) -> None:
    missing = _enqueue(storage_url, {"lr": 0.01})
    assert missing.exit_code == 1 and "no study database" in missing.stderr
    assert not db_path.exists()
    _start(tiny_path, storage_url, 1)
    other = _enqueue(storage_url, {"lr": 0.01}, study="other")
    assert other.exit_code == 2
    assert other.stderr.strip() == ("Error: no study 'other' in the storage; studies here: "
                                    "tiny")


def test_a_study_tuner_did_not_create_is_queued_unchecked(storage_url: str,
                                                         db_path: Path) -> None:
    db_path.parent.mkdir()
    study = optuna.create_study(study_name="plain", storage=storage_url)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    result = _enqueue(storage_url, {"x": 3.0}, study="plain")
    assert _queued_number(result) == 1
    assert "were not checked" in result.stdout
    assert study.get_trials(states=(TrialState.WAITING,))[0].system_attrs["fixed_params"] == {
        "x": 3.0}


def test_a_study_at_its_budget_says_how_to_run_the_trial(tiny_path: Path,
                                                        storage_url: str) -> None:
    _start(tiny_path, storage_url, 1)
    result = _enqueue(storage_url, {"lr": 0.01})
    assert "The study has its budget (1 of 1 trial finished)" in result.stdout


def test_start_enqueue_runs_first_in_a_new_study_and_is_queued_once(tiny_path: Path,
                                                                   storage_url: str) -> None:
    given = {"lr": 0.0333, "optimizer": "adam"}
    args = ["--enqueue", json.dumps(given)]
    _start(tiny_path, storage_url, 2, *args)
    _start(tiny_path, storage_url, 3, *args)  # resumed: not queued again
    trials = optuna.load_study(study_name="tiny", storage=storage_url).trials
    assert trials[0].params == given and trials[0].state == TrialState.COMPLETE
    assert len(trials) == 3
    assert [t.number for t in trials if t.params == given] == [0]


def test_start_enqueue_is_checked_before_the_database(tiny_path: Path, storage_url: str,
                                                      db_path: Path) -> None:
    result = _invoke(["start", "--space", str(tiny_path), "--storage", storage_url,
                      "--enqueue", '{"lr": 7}'])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("Error: --enqueue: 'lr' must be in float [0.001, 0.1] "
                                     "log, but got 7")
    assert not db_path.exists()
