"""`user_params:` in the space: parsed like `params`, suggested to Optuna, recorded as
ordinary Optuna parameters, queried like the built-ins, handed to code of yours."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from click.testing import CliRunner
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from tuner.cli import cli
from tuner.errors import SpaceError
from tuner.space import Categorical, Fixed, FloatRange, IntRange, load_space

USER_PARAMS: dict[str, Any] = {
    "width_mult": {"low": 0.5, "high": 2.0},
    "kernel_size": {"choices": [3, 5]},
    "depth": {"low": 1, "high": 4},
    "temperature": {"low": 0.01, "high": 1.0, "log": True},
    "ratio": {"low": 0.0, "high": 1.0, "step": 0.25},
    "block": {"choices": {"plain": {},
                          "residual": {"gate": {"low": 0.1, "high": 0.9},
                                       "scale": {"choices": ["a", "b"]}}}},
    "tag": "v1",
}


def _space(write_space: Any, user_params: Any = None, **extra: Any) -> Path:
    return write_space({"task": {"dataset": "iris", "epochs": 2}, "sampler": {"name": "random"},
                        "pruner": {"name": "none"}, "params": {"hidden": 8, "layers": 1},
                        "user_params": USER_PARAMS if user_params is None else user_params,
                        **extra})


def test_user_params_parse_into_the_classes_of_params(write_space: Any) -> None:
    space = load_space(_space(write_space))
    by_name = {p.name: p for p in space.all_params()}
    assert by_name["width_mult"] == FloatRange("width_mult", 0.5, 2.0)
    assert by_name["depth"] == IntRange("depth", 1, 4)
    assert by_name["temperature"] == FloatRange("temperature", 0.01, 1.0, log=True)
    assert by_name["ratio"] == FloatRange("ratio", 0.0, 1.0, step=0.25)
    assert by_name["kernel_size"] == Categorical("kernel_size", (3, 5))
    assert by_name["tag"] == Fixed("tag", "v1")
    assert isinstance(by_name["block"], Categorical)
    assert [p.name for p in by_name["block"].branch("residual")] == ["gate", "scale"]
    # A built-in parameter stays a built-in one; the user's come after.
    assert [p.name for p in space.params] == ["hidden", "layers"]


def test_user_params_are_sampled_in_range_with_conditionals_exactly_under_their_choice(
        write_space: Any) -> None:
    space = load_space(_space(write_space))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        values, user = space.sample(trial)
        assert values == {"hidden": 8, "layers": 1}
        assert 0.5 <= user["width_mult"] <= 2.0 and isinstance(user["width_mult"], float)
        assert user["depth"] in range(1, 5) and isinstance(user["depth"], int)
        assert 0.01 <= user["temperature"] <= 1.0
        assert user["ratio"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert user["kernel_size"] in (3, 5) and user["tag"] == "v1"
        residual = user["block"] == "residual"
        assert ("gate" in user) == residual and ("scale" in user) == residual
        assert ("gate" in trial.params) == residual
        assert "tag" not in trial.params  # a fixed value is not an Optuna parameter
        seen.add(user["block"])
        study.tell(trial, 0.0)
    assert seen == {"plain", "residual"}
    # Recorded with Optuna's own distributions, as the built-ins are.
    dists = {k: v for t in study.trials for k, v in t.distributions.items()}
    assert dists["width_mult"] == FloatDistribution(0.5, 2.0)
    assert dists["depth"] == IntDistribution(1, 4)
    assert dists["kernel_size"] == CategoricalDistribution((3, 5))
    assert dists["ratio"] == FloatDistribution(0.0, 1.0, step=0.25)


@pytest.mark.parametrize(("user_params", "path", "message"), [
    ({"lr": {"low": 0.1, "high": 1.0}}, "user_params.lr",
     "'lr' is a built-in parameter; give it under params"),
    ({"dropout": 0.3}, "user_params.dropout", "'dropout' is a built-in parameter"),
    ({"value": 1}, "user_params.value", "'value' is a column of every trial"),
    ({"seed": 1}, "user_params.seed", "'seed' is a column of every trial"),
    ({"2fast": 1}, "user_params.2fast", "must be a Python identifier, but got '2fast'"),
    ({"w": {"low": 2.0, "high": 1.0}}, "user_params.w",
     "`low <= high` must hold, but got (low=2.0, high=1.0)"),
    ({"w": {"low": 0.0, "high": 1.0, "log": True}}, "user_params.w",
     "`low > 0` must hold for a log range"),
    ({"w": {"low": 0, "high": 10, "step": 3}}, "user_params.w", "`step` must divide"),
    ({"w": {"low": 1, "high": 4, "type": "int", "step": 0.5}}, "user_params.w.step",
     "`step > 0` must hold"),
    ({"w": {"low": 0.5, "high": 4, "type": "int"}}, "user_params.w.low",
     "must be an integer, but got 0.5"),
    ({"w": {"low": 1, "high": 4, "type": "str"}}, "user_params.w.type",
     "expected int or float, but got 'str'"),
    ({"w": {"low": 1}}, "user_params.w", "`high` is missing"),
    ({"w": {"choices": []}}, "user_params.w.choices", "must be a non-empty list or mapping"),
    ({"w": {"choices": [1, 1]}}, "user_params.w.choices", "choices must be distinct"),
    ({"w": {"choices": [[1, 2], 3]}}, "user_params.w.choices",
     "a choice must be null, true/false, a number or a string"),
    ({"w": {"choices": [1], "low": 0}}, "user_params.w.low", "unknown key 'low'"),
    ({"g": {"low": 0.1, "high": 0.5},
      "block": {"choices": {"a": {"g": {"low": 0.1, "high": 0.5}}}}},
     "user_params.block.choices.a.g", "'g' is also given at top level"),
    ({"block": {"choices": {"a": {"g": {"low": 0.1, "high": 0.5}},
                            "b": {"g": {"choices": [1, 2]}}}}},
     "user_params.block.choices.b.g", "must have the same kind, log scale and choices"),
    ({"block": {"choices": {"a": {"lr": 0.1}}}}, "user_params.block.choices.a.lr",
     "'lr' is a built-in parameter"),
    ([1, 2], "user_params", "must be a mapping of parameter names"),
])
def test_a_bad_user_param_is_one_line_naming_file_key_rule_and_value(
        runner: CliRunner, write_space: Any, storage_url: str, db_path: Path,
        user_params: Any, path: str, message: str) -> None:
    space = _space(write_space, user_params)
    with pytest.raises(SpaceError) as error:
        load_space(space)
    assert str(error.value).startswith(f"{space}: {path}: "), error.value
    assert message in str(error.value)
    result = runner.invoke(cli, ["start", "--space", str(space), "--storage", storage_url,
                                 "--quiet"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert not db_path.exists()  # nothing written


def test_the_same_name_in_two_branches_with_one_distribution_is_one_parameter(
        write_space: Any) -> None:
    space = load_space(_space(write_space, {"block": {"choices": {
        "a": {"g": {"low": 0.1, "high": 0.5}}, "b": {"g": {"low": 0.2, "high": 0.4}}}}}))
    assert [p.name for p in space.all_params()] == ["hidden", "layers", "block", "g", "g"]


def test_user_params_change_the_fingerprint_and_builtin_spaces_keep_theirs(
        write_space: Any) -> None:
    with_user = load_space(_space(write_space))
    without = load_space(_space(write_space, {}))
    assert with_user.fingerprint() != without.fingerprint()
    changed = load_space(_space(write_space, {**USER_PARAMS, "depth": {"low": 1, "high": 5}}))
    assert changed.fingerprint() != with_user.fingerprint()
    # The fingerprints recorded by studies created before user_params and the new task
    # keys existed: those studies must still resume (changing them would refuse every
    # existing study as "a different search space").
    assert {name: load_space(name).fingerprint() for name in
            ("quick", "regularization", "population", "optimizers",
             "dropout_vs_batchnorm")} == {
        "quick": "19535bd9cb3a3bb7", "regularization": "d9f0dc77949a07c8",
        "population": "45923324631294cb", "optimizers": "06328ddd5212a414",
        "dropout_vs_batchnorm": "557120ac637455ae"}


BUILDER = '''
import json, os
import torch.nn as nn

def build(config, input_shape, n_outputs):
    with open(os.environ["RECORD"], "a") as out:
        out.write(json.dumps({"user": dict(config.user), "hidden": config["hidden"],
                              "dropout": config.dropout, "seed": config.seed}) + "\\n")
    width = round(8 * config.user["width_mult"])
    return nn.Sequential(nn.Linear(input_shape[0], width), nn.ReLU(), nn.Linear(width, n_outputs))
'''


def test_user_params_reach_the_builder_optuna_and_every_query(
        runner: CliRunner, write_space: Any, storage_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    record = tmp_path / "built.jsonl"
    monkeypatch.setenv("RECORD", str(record))
    builder = tmp_path / "net.py"
    builder.write_text(BUILDER)
    space = _space(write_space, {"width_mult": {"low": 0.5, "high": 3.0},
                                 "kernel_size": {"choices": [3, 5]}, "tag": "v1"})
    result = runner.invoke(cli, ["start", "--space", str(space), "--study", "mine",
                                 "--storage", storage_url, "--trials", "6",
                                 "--model", f"{builder}:build"])
    assert result.exit_code == 0, result.output
    assert "no built-in model reads them" not in result.output
    # What Optuna recorded is what the builder received, trial by trial.
    trials = optuna.load_study(study_name="mine", storage=storage_url).get_trials()
    assert len(trials) == 6
    built = [json.loads(line) for line in record.read_text().splitlines()]
    trained = built[-6:]  # before them, the pre-study check's draws
    for trial, got in zip(trials, trained, strict=True):
        assert got["user"] == {"width_mult": trial.params["width_mult"],
                               "kernel_size": trial.params["kernel_size"], "tag": "v1"}
        assert got["hidden"] == 8 and got["dropout"] == 0.0
        assert got["seed"] == trial.user_attrs["seed"]
    # The query commands read them as parameters like any other.
    wide = {t.number for t in trials if t.params["width_mult"] > 1.5}
    where = runner.invoke(cli, ["trials", "--study", "mine", "--storage", storage_url,
                                "--where", "width_mult > 1.5 and kernel_size in (3, 5)",
                                "--format", "json"])
    assert where.exit_code == 0, where.output
    assert {row["number"] for row in json.loads(where.output)} == wide
    columns = runner.invoke(cli, ["trials", "--study", "mine", "--storage", storage_url,
                                  "--columns", "number,width_mult", "--sort", "-width_mult",
                                  "--format", "json"])
    rows = json.loads(columns.output)
    assert [r["width_mult"] for r in rows] == sorted(
        (t.params["width_mult"] for t in trials), reverse=True)
    best = runner.invoke(cli, ["best", "--study", "mine", "--storage", storage_url,
                               "--format", "json"])
    best_trial = max((t for t in trials if t.value is not None), key=lambda t: t.value)
    assert json.loads(best.output)[0]["width_mult"] == best_trial.params["width_mult"]


def test_user_params_with_a_builtin_model_are_recorded_and_the_start_line_says_so(
        runner: CliRunner, write_space: Any, storage_url: str) -> None:
    space = _space(write_space, {"width_mult": {"low": 0.5, "high": 2.0}})
    result = runner.invoke(cli, ["start", "--space", str(space), "--study", "builtin",
                                 "--storage", storage_url, "--trials", "2"])
    assert result.exit_code == 0, result.output
    assert "user_params (width_mult) are searched and recorded, but no built-in model " \
           "reads them" in result.output
    trials = optuna.load_study(study_name="builtin", storage=storage_url).trials
    assert all(0.5 <= t.params["width_mult"] <= 2.0 for t in trials)


def test_the_report_has_slices_of_the_user_params(runner: CliRunner, write_space: Any,
                                                  storage_url: str, tmp_path: Path) -> None:
    space = _space(write_space, {"width_mult": {"low": 0.5, "high": 2.0}})
    assert runner.invoke(cli, ["start", "--space", str(space), "--study", "r", "--storage",
                               storage_url, "--trials", "4", "--quiet"]).exit_code == 0
    result = runner.invoke(cli, ["report", "--study", "r", "--storage", storage_url,
                                 "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report" / "slice_user_params.png").stat().st_size > 0
    assert "Slice plots of your parameters" in (tmp_path / "report" / "index.html").read_text()


def test_config_user_is_read_only_and_says_what_it_has() -> None:
    from tuner.train.config import Config, TrialConfig, UserParams

    config = Config(TrialConfig(epochs=1, user=UserParams({"width_mult": 1.5})))
    assert config.user == {"width_mult": 1.5}
    with pytest.raises(TypeError):
        config.user["width_mult"] = 2.0  # type: ignore[index]
    with pytest.raises(KeyError, match="no user parameter 'depth' in this trial; it has: "
                                       "width_mult"):
        config.user["depth"]


def test_resuming_with_changed_user_params_is_refused_naming_the_change(
        runner: CliRunner, write_space: Any, storage_url: str, db_path: Path,
        db_snapshot: Any) -> None:
    args = ["--storage", storage_url, "--study", "r", "--trials", "1", "--quiet"]
    first = _space(write_space, {"width_mult": {"low": 0.5, "high": 2.0}})
    assert runner.invoke(cli, ["start", "--space", str(first), *args]).exit_code == 0
    before = db_snapshot(db_path)
    changed = _space(write_space, {"width_mult": {"low": 0.5, "high": 3.0}}, )
    result = runner.invoke(cli, ["start", "--space", str(changed), *args])
    assert result.exit_code == 2
    assert "user_params.width_mult was 'float [0.5, 2]', now 'float [0.5, 3]'" in result.output
    assert db_snapshot(db_path) == before
