"""Search spaces: loading, freezing, parameter classes, conditionals, validation, fingerprint."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna
import pytest

from tuner.errors import SpaceError, UsageError
from tuner.space import (
    Categorical,
    Fixed,
    FloatRange,
    IntRange,
    Space,
    builtin_spaces,
    load_space,
    sample,
    spaces_dir,
)

BUILTIN = ("dropout_vs_batchnorm", "optimizers", "population", "quick",
           "regularization")


# --- loading built-in spaces ----------------------------------------------------------------


def test_the_builtin_spaces_are_listed() -> None:
    assert tuple(builtin_spaces()) == BUILTIN


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_space_loads_by_name_and_by_path(name: str) -> None:
    by_name = load_space(name)
    by_path = load_space(spaces_dir() / f"{name}.yaml")
    assert isinstance(by_name, Space)
    assert by_name.name == name
    assert by_name == by_path
    assert by_name.fingerprint() == by_path.fingerprint()
    assert by_name.source == f"search_spaces/{name}.yaml"


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_space_is_frozen(name: str) -> None:
    space = load_space(name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        space.seed = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        space.task.epochs = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        space.sampler.name = "random"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        space.pruner.name = "none"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        space.early_stopping.patience = 1  # type: ignore[misc]
    assert isinstance(space.params, tuple)
    for param in space.all_params():
        with pytest.raises(dataclasses.FrozenInstanceError):
            param.name = "other"  # type: ignore[misc]
        if isinstance(param, Categorical):
            assert isinstance(param.choices, tuple)
            assert isinstance(param.branches, tuple)


def test_unknown_space_name_lists_the_builtin_ones() -> None:
    with pytest.raises(SpaceError) as info:
        load_space("no_such_space")
    message = str(info.value)
    assert "'no_such_space'" in message
    for name in BUILTIN:
        assert name in message


def test_builtin_space_loads_from_any_directory(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    assert load_space("quick").task.dataset == "digits"


# --- parameter classes ----------------------------------------------------------------------

PARAMS_YAML = """\
task: {dataset: iris, epochs: 2}
params:
  hidden: 16
  layers: {value: 2}
  lr: 1e-3
  max_norm: null
  l2: {low: 1e-6, high: 1e-2, log: true}
  dropout: {low: 0.0, high: 0.5, step: 0.1}
  input_noise: {low: 0, high: 1}
  batch_size: {low: 16, high: 64, step: 16}
  step_size: {low: 2, high: 32, log: true}
  batchnorm: {choices: [false, true]}
  dropout_kind: {choices: [bernoulli, gaussian]}
  schedule: step
"""


def _by_name(space: Space) -> dict[str, Any]:
    return {p.name: p for p in space.all_params()}


def test_scientific_notation_reads_as_float(write_space: Any) -> None:
    params = _by_name(load_space(write_space(PARAMS_YAML)))
    # Plain YAML 1.1 would read `1e-3` as the string "1e-3".
    assert params["lr"] == Fixed("lr", 1e-3)
    assert isinstance(params["lr"].value, float)
    assert isinstance(params["l2"].low, float) and params["l2"].low == 1e-6
    assert isinstance(params["l2"].high, float) and params["l2"].high == 1e-2


def test_params_parse_into_the_right_classes(write_space: Any) -> None:
    params = _by_name(load_space(write_space(PARAMS_YAML)))
    assert params["hidden"] == Fixed("hidden", 16)
    assert params["layers"] == Fixed("layers", 2)
    assert params["max_norm"] == Fixed("max_norm", None)
    assert params["schedule"] == Fixed("schedule", "step")
    assert params["l2"] == FloatRange("l2", 1e-6, 1e-2, log=True, step=None)
    assert params["dropout"] == FloatRange("dropout", 0.0, 0.5, log=False, step=0.1)
    # An int written where a float parameter is expected becomes a float.
    assert params["input_noise"] == FloatRange("input_noise", 0.0, 1.0)
    assert isinstance(params["input_noise"].low, float)
    assert params["batch_size"] == IntRange("batch_size", 16, 64, log=False, step=16)
    assert params["step_size"] == IntRange("step_size", 2, 32, log=True, step=1)
    assert params["batchnorm"] == Categorical("batchnorm", (False, True))
    assert params["dropout_kind"] == Categorical("dropout_kind", ("bernoulli", "gaussian"))


def test_sampled_values_respect_ranges_and_steps(write_space: Any) -> None:
    space = load_space(write_space(PARAMS_YAML))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        values = sample(space.params, study.ask())
        assert values["hidden"] == 16 and values["lr"] == 1e-3 and values["max_norm"] is None
        assert 1e-6 <= values["l2"] <= 1e-2
        assert round(values["dropout"], 9) in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
        assert values["batch_size"] in (16, 32, 48, 64)
        assert 2 <= values["step_size"] <= 32
        assert values["batchnorm"] in (False, True)


# --- conditional parameters -----------------------------------------------------------------

# What each built-in space declares, written out by hand from the YAML files so the test
# does not re-derive it from the parser under test.
EXPECTED_CONDITIONALS: dict[str, tuple[set[str], dict[str, set[str]], dict[str, set[str]]]] = {
    "optimizers": (
        {"hidden", "layers", "batch_size", "l2", "optimizer", "schedule"},
        {"sgd": {"lr"}, "momentum": {"lr", "momentum"}, "adagrad": {"lr"},
         "rmsprop": {"lr", "alpha"}, "adam": {"lr", "beta1", "beta2"},
         "adamw": {"lr", "weight_decay"}},
        {"none": set(), "step": {"step_size", "gamma"}, "multistep": {"milestones", "gamma"},
         "exponential": {"gamma"}, "cosine": {"T_max"}, "plateau": {"factor", "patience"}},
    ),
    "regularization": (
        {"hidden", "layers", "batch_size", "l1", "l2", "dropout", "dropout_kind", "batchnorm",
         "input_noise", "augment", "max_norm", "lr", "optimizer", "schedule"},
        {"sgd": set(), "momentum": {"momentum"}, "adagrad": set(), "rmsprop": {"alpha"},
         "adam": {"beta1", "beta2"}, "adamw": {"beta1", "weight_decay"}},
        {"none": set(), "step": {"step_size", "gamma"}, "multistep": {"milestones", "gamma"},
         "exponential": {"gamma"}, "cosine": {"eta_min"}, "plateau": {"factor", "patience"}},
    ),
    "quick": (
        {"hidden", "layers", "batch_size", "lr", "l2", "dropout", "optimizer"},
        {"adam": set(), "momentum": {"momentum"}},
        {},
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_CONDITIONALS))
def test_conditional_params_exist_only_under_their_choice(name: str) -> None:
    top, by_optimizer, by_schedule = EXPECTED_CONDITIONALS[name]
    space = load_space(name)
    fixed = {p.name for p in space.all_params() if isinstance(p, Fixed)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen_optimizers, seen_schedules = set(), set()
    for _ in range(150):
        trial = study.ask()
        values = sample(space.params, trial)
        optimizer = values["optimizer"]
        schedule = values.get("schedule")
        expected = top | by_optimizer[optimizer] | by_schedule.get(schedule, set())
        assert set(values) == expected, (optimizer, schedule)
        # Optuna sees exactly the searched ones; fixed values are not Optuna parameters.
        assert set(trial.params) == expected - fixed
        assert ("momentum" in values) == (optimizer == "momentum")
        has_gamma = schedule in ("step", "multistep", "exponential")
        assert ("gamma" in values) == has_gamma
        seen_optimizers.add(optimizer)
        seen_schedules.add(schedule)
    assert seen_optimizers == set(by_optimizer)
    if by_schedule:
        assert seen_schedules == set(by_schedule)


def test_conditional_values_come_from_their_branch_range() -> None:
    space = load_space("optimizers")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    for _ in range(100):
        values = sample(space.params, study.ask())
        if values["optimizer"] == "sgd":
            assert 1e-3 <= values["lr"] <= 0.5
        if values["optimizer"] == "adam":
            assert 1e-5 <= values["lr"] <= 1e-2
        if values["optimizer"] == "momentum":
            assert 0.5 <= values["momentum"] <= 0.99
        if values.get("schedule") == "exponential":
            assert 0.85 <= values["gamma"] <= 0.999
        if values.get("schedule") == "multistep":
            assert values["milestones"] in ("10,20", "5,15,25")


def test_top_level_hyper_param_allowed_when_every_choice_takes_it(write_space: Any) -> None:
    space = load_space(write_space({
        "params": {"optimizer": {"choices": ["sgd", "adam"]}, "lr": {"low": 1e-4, "high": 0.1},
                   "schedule": "step", "gamma": 0.5},
    }))
    assert {"optimizer", "lr", "schedule", "gamma"} == {p.name for p in space.all_params()}


def test_branch_hyper_param_needs_the_same_distribution_in_every_branch(
        write_space: Any) -> None:
    """Optuna refuses one name with a log range in one trial and a linear one in another
    (or categorical choices that differ); the loader must refuse such a file up front
    rather than let the study crash at its second trial."""
    path = write_space({"params": {"optimizer": {"choices": {
        "sgd": {"lr": {"low": 0.01, "high": 0.5}},
        "adam": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}},
    }}}})
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert path.name in message
    assert "params.optimizer.choices." in message and "lr" in message
    assert "log" in message

    path = write_space({"params": {"schedule": {"choices": {
        "step": {"gamma": {"choices": [0.1, 0.5]}},
        "exponential": {"gamma": {"choices": [0.9, 0.99]}},
    }}}}, name="gammas")
    with pytest.raises(SpaceError) as info:
        load_space(path)
    assert "gamma" in str(info.value)


# --- validation errors ----------------------------------------------------------------------

TINY_TASK = {"dataset": "iris", "epochs": 2}

# (label, the space mapping, key path, a fragment stating the rule, a fragment echoing the value)
INVALID: list[tuple[str, dict[str, Any], str, str, str]] = [
    ("unknown top-level key", {"task": TINY_TASK, "epochs": 3},
     "epochs:", "unknown key", "'epochs'"),
    ("unknown param", {"task": TINY_TASK, "params": {"l3": 0.1}},
     "params.l3:", "unknown key", "'l3'"),
    ("unknown range key", {"task": TINY_TASK, "params": {"l2": {"low": 0, "high": 1, "lg": 1}}},
     "params.l2.lg:", "unknown key", "'lg'"),
    ("low > high", {"task": TINY_TASK, "params": {"l2": {"low": 1.0, "high": 0.1}}},
     "params.l2:", "`low <= high` must hold", "(low=1.0, high=0.1)"),
    ("log with low <= 0",
     {"task": TINY_TASK, "params": {"l2": {"low": 0.0, "high": 0.1, "log": True}}},
     "params.l2:", "`low > 0` must hold for a log range", "low=0.0"),
    ("lr range starting at 0", {"task": TINY_TASK, "params": {"lr": {"low": 0.0, "high": 0.1}}},
     "params.lr.low:", "`lr > 0` must hold", "0.0"),
    ("dropout out of range", {"task": TINY_TASK, "params": {"dropout": 0.95}},
     "params.dropout:", "0 <= dropout < 0.9", "0.95"),
    ("dropout range reaching 0.9",
     {"task": TINY_TASK, "params": {"dropout": {"low": 0.0, "high": 0.9}}},
     "params.dropout.high:", "0 <= dropout < 0.9", "0.9"),
    ("negative l2", {"task": TINY_TASK, "params": {"l2": -1e-3}},
     "params.l2:", "l2 >= 0", "-0.001"),
    ("int param given a float", {"task": TINY_TASK, "params": {"hidden": 16.5}},
     "params.hidden:", "must be an integer", "16.5"),
    ("unknown optimizer in choices",
     {"task": TINY_TASK, "params": {"optimizer": {"choices": ["adam", "nadam"]}}},
     "params.optimizer.choices:", "expected one of: sgd, momentum", "'nadam'"),
    ("unknown optimizer fixed", {"task": TINY_TASK, "params": {"optimizer": "nadam"}},
     "params.optimizer:", "expected one of:", "'nadam'"),
    ("unknown schedule",
     {"task": TINY_TASK, "params": {"schedule": {"choices": {"none": {}, "cyclic": {}}}}},
     "params.schedule.choices:", "expected one of: none, step", "'cyclic'"),
    ("hyper-param under the wrong optimizer",
     {"task": TINY_TASK, "params": {"optimizer": {"choices": {"adam": {"momentum": 0.9}}}}},
     "params.optimizer.choices.adam.momentum:", "has no hyper-parameter", "'momentum'"),
    ("hyper-param under the wrong schedule",
     {"task": TINY_TASK, "params": {"schedule": {"choices": {"cosine": {"gamma": 0.5}}}}},
     "params.schedule.choices.cosine.gamma:", "has no hyper-parameter", "'gamma'"),
    ("top-level momentum when optimizer is a choice",
     {"task": TINY_TASK,
      "params": {"optimizer": {"choices": ["adam", "momentum"]}, "momentum": 0.9}},
     "params.momentum:", "applies only to optimizer momentum", "'momentum'"),
    ("top-level gamma with the default schedule", {"task": TINY_TASK, "params": {"gamma": 0.5}},
     "params.gamma:", "applies only to schedule", "'gamma'"),
    ("conditionals under a non-conditional parent",
     {"task": TINY_TASK, "params": {"batchnorm": {"choices": {True: {"lr": 0.1}}}}},
     "params.batchnorm.choices:", "conditional parameters", "list of choices"),
    ("unknown dataset", {"task": {"dataset": "mnist"}},
     "task.dataset:", "unknown dataset", "'mnist'"),
    ("unknown metric", {"task": {"dataset": "iris", "metric": "f1"}},
     "task.metric:", "unknown metric", "'f1'"),
    ("metric for the wrong task", {"task": {"dataset": "diabetes", "metric": "accuracy"}},
     "task.metric:", "is for classification", "'diabetes'"),
    ("direction against the metric", {"task": {"dataset": "iris", "direction": "minimize"}},
     "task.direction:", "must be maximized", "'minimize'"),
    ("cnn on a tabular dataset", {"task": {"dataset": "iris", "model": "cnn"}},
     "task.model:", "needs an image dataset", "'iris'"),
    ("zero epochs", {"task": {"dataset": "iris", "epochs": 0}},
     "task.epochs:", "integer >= 1", "0"),
    ("unknown sampler", {"task": TINY_TASK, "sampler": {"name": "annealing"}},
     "sampler.name:", "unknown sampler", "'annealing'"),
    ("unknown sampler setting", {"task": TINY_TASK, "sampler": {"name": "tpe", "warmup": 3}},
     "sampler.warmup:", "unknown setting", "'warmup'"),
    ("unknown pruner", {"task": TINY_TASK, "pruner": {"name": "early"}},
     "pruner.name:", "unknown pruner", "'early'"),
    ("unknown pruner setting", {"task": TINY_TASK, "pruner": {"name": "median", "warmup": 3}},
     "pruner.warmup:", "unknown setting", "'warmup'"),
    ("wrapped on a pruner that wraps nothing",
     {"task": TINY_TASK, "pruner": {"name": "median", "wrapped": {"name": "median"}}},
     "pruner.wrapped:", "only the `patient` pruner", "patient"),
    ("early stopping patience 0", {"task": TINY_TASK, "early_stopping": {"patience": 0}},
     "early_stopping.patience:", "integer >= 1", "0"),
    ("negative min_delta", {"task": TINY_TASK, "early_stopping": {"min_delta": -0.1}},
     "early_stopping.min_delta:", "`min_delta >= 0`", "-0.1"),
]


@pytest.mark.parametrize(("label", "raw", "key", "rule", "value"), INVALID,
                         ids=[case[0] for case in INVALID])
def test_invalid_space_names_file_key_rule_and_value(write_space: Any, label: str,
                                                     raw: dict[str, Any], key: str, rule: str,
                                                     value: str) -> None:
    path = write_space(raw, name="bad_space")
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "bad_space.yaml" in message
    assert key in message, message
    assert rule in message, message
    assert value in message.split(key, 1)[1], message
    assert "\n" not in message
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2


def test_grid_sampler_with_a_continuous_float_is_refused(write_space: Any) -> None:
    """'Every error names the file, the key path, the rule and the value': the grid
    error must also echo the range it refuses."""
    path = write_space({"task": TINY_TASK, "sampler": {"name": "grid"},
                        "params": {"lr": {"low": 0.001, "high": 0.1}}}, name="grid_space")
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(f"{path}: params.lr: "), message
    assert "grid sampler needs finite values" in message
    assert "0.001" in message and "0.1" in message.split("params.lr", 1)[1], message


def test_merge_keys_may_override_what_they_merge(write_space: Any) -> None:
    path = write_space("task: {dataset: iris}\nparams:\n  dropout: &rate {low: 0.0, high: 0.5}\n"
                       "  input_noise:\n    <<: *rate\n    high: 0.3\n", name="merged")
    params = {p.name: p for p in load_space(path).params}
    assert (params["input_noise"].low, params["input_noise"].high) == (0.0, 0.3)
    assert (params["dropout"].low, params["dropout"].high) == (0.0, 0.5)


def test_malformed_yaml_names_the_file_and_line(write_space: Any) -> None:
    path = write_space("task:\n  dataset: iris\nparams:\n  lr: [0.1, 0.2\n  l2: 0.1\n",
                       name="broken")
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(f"{path}: malformed YAML: line "), message
    assert "broken.yaml" in message
    assert "line 5" in message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", ""])
def test_yaml_that_is_not_a_mapping_is_refused(write_space: Any, text: str) -> None:
    path = write_space(text, name="not_a_mapping")
    with pytest.raises(SpaceError, match="must be a YAML mapping"):
        load_space(path)


# --- overrides ------------------------------------------------------------------------------


def test_overrides_apply(tiny_path: Path) -> None:
    space = load_space(tiny_path, overrides={"epochs": 3, "seed": 5, "dataset": "wine"})
    assert space.task.epochs == 3
    assert space.seed == 5
    assert space.task.dataset == "wine"
    # Recorded like the file's own values, so the stored space is the one that ran.
    assert space.raw["task"]["epochs"] == 3
    assert space.raw["task"]["dataset"] == "wine"
    assert space.raw["seed"] == 5
    plain = load_space(tiny_path)
    assert plain.task.epochs == 2 and plain.seed == 0 and plain.task.dataset == "iris"
    assert plain.fingerprint() != space.fingerprint()


def test_overrides_are_validated(tiny_path: Path) -> None:
    with pytest.raises(SpaceError, match=r"task\.dataset: unknown dataset 'mnist'"):
        load_space(tiny_path, overrides={"dataset": "mnist"})
    with pytest.raises(SpaceError, match=r"task\.epochs: .*0"):
        load_space(tiny_path, overrides={"epochs": 0})


def test_overrides_apply_to_a_builtin_space() -> None:
    space = load_space("quick", overrides={"epochs": 2, "dataset": "iris"})
    assert (space.task.epochs, space.task.dataset) == (2, "iris")
    assert load_space("quick").task.epochs == 10


# --- fingerprint ----------------------------------------------------------------------------

MINIMAL = """\
task:
  dataset: iris
  epochs: 2
params:
  lr: 1e-3
  hidden: {low: 8, high: 32}
  dropout: {low: 0.0, high: 0.5}
"""

SPELLED_OUT = """\
description: the same space, every default written out
trials: 99
seed: 0
task:
  dataset: iris
  model: mlp
  epochs: 2
  metric: accuracy
  direction: maximize
params:
  lr: 0.001
  hidden: {type: int, low: 8, high: 32, log: false, step: 1}
  dropout: {type: float, low: 0, high: 0.5, log: false}
sampler:
  name: tpe
pruner:
  name: median
early_stopping:
  min_delta: 0.0
"""


def test_fingerprint_equal_for_equivalent_files(write_space: Any) -> None:
    a = load_space(write_space(MINIMAL, name="a"))
    b = load_space(write_space(SPELLED_OUT, name="b"))
    assert a.fingerprint() == b.fingerprint()


def test_fingerprint_ignores_budget_and_description(write_space: Any) -> None:
    base = load_space(write_space(MINIMAL, name="a"))
    other = load_space(write_space("trials: 7\ndescription: something else\n" + MINIMAL,
                                   name="b"))
    assert other.trials == 7
    assert base.fingerprint() == other.fingerprint()


@pytest.mark.parametrize("change", [
    ("  hidden: {low: 8, high: 32}", "  hidden: {low: 8, high: 64}"),
    ("  dropout: {low: 0.0, high: 0.5}", "  dropout: {low: 0.0, high: 0.5, step: 0.1}"),
    ("  lr: 1e-3", "  lr: 1e-2"),
    ("  epochs: 2", "  epochs: 3"),
    ("  dataset: iris", "  dataset: wine"),
    ("params:", "seed: 1\nparams:"),
    ("params:", "sampler: {name: random}\nparams:"),
    ("params:", "pruner: {name: none}\nparams:"),
    ("params:", "early_stopping: {patience: 2}\nparams:"),
])
def test_fingerprint_differs_for_a_changed_space(write_space: Any,
                                                 change: tuple[str, str]) -> None:
    old, new = change
    assert old in MINIMAL
    base = load_space(write_space(MINIMAL, name="a"))
    changed = load_space(write_space(MINIMAL.replace(old, new), name="b"))
    assert base.fingerprint() != changed.fingerprint()


def test_fingerprint_ignores_the_order_of_parameters(write_space: Any) -> None:
    a = load_space(write_space(MINIMAL, name="a"))
    lines = MINIMAL.splitlines()
    start = lines.index("params:") + 1
    reordered = "\n".join(lines[:start] + lines[start:][::-1]) + "\n"
    b = load_space(write_space(reordered, name="b"))
    assert [p.name for p in a.params] != [p.name for p in b.params]
    assert a.fingerprint() == b.fingerprint()


def test_fingerprint_ignores_the_order_of_parameters_within_a_branch(write_space: Any) -> None:
    def space(order: tuple[str, str], name: str) -> Space:
        hyper = {"lr": {"low": 1e-4, "high": 0.1, "log": True},
                 "momentum": {"low": 0.5, "high": 0.99}}
        return load_space(write_space({"task": TINY_TASK, "params": {"optimizer": {"choices": {
            "adam": {}, "momentum": {k: hyper[k] for k in order}}}}}, name=name))

    assert (space(("lr", "momentum"), "a").fingerprint()
            == space(("momentum", "lr"), "b").fingerprint())


def test_fingerprint_keeps_the_order_of_choices(write_space: Any) -> None:
    """Optuna refuses a categorical whose choices change order within a study."""
    a = load_space(write_space({"task": TINY_TASK,
                                "params": {"optimizer": {"choices": ["adam", "sgd"]}}}, "a"))
    b = load_space(write_space({"task": TINY_TASK,
                                "params": {"optimizer": {"choices": ["sgd", "adam"]}}}, "b"))
    assert a.fingerprint() != b.fingerprint()
