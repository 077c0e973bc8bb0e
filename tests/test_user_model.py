"""Your own data and your own model through the whole `tuner start` path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from tuner.cli import cli

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "my_model.py"


@pytest.fixture
def csv_path(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    frame["label"] = np.where(x[:, 0] + x[:, 1] > 0, "pos", "neg")
    frame["side"] = x[:, 0] * x[:, 2]  # an auxiliary target, not a feature
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    return path


def test_user_data_and_model_run_prune_and_record(runner: CliRunner, write_space,
                                                  csv_path: Path, storage_url: str) -> None:
    space = write_space({
        "task": {"epochs": 6},
        "sampler": {"name": "random"},
        # Prune everything after the warm-up: proves pruning reaches a user model.
        "pruner": {"name": "threshold", "lower": 1.1, "n_warmup_steps": 2},
        "params": {"hidden": 16, "layers": 2, "batchnorm": True,
                   "lr": {"low": 1e-3, "high": 1e-1, "log": True},
                   "dropout": {"low": 0.0, "high": 0.3}},
    })
    result = runner.invoke(cli, ["start", "--space", str(space), "--study", "mine",
                                 "--storage", storage_url, "--trials", "3", "--quiet",
                                 "--data", str(csv_path), "--target", "label",
                                 "--model", f"{EXAMPLE}:build"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="mine", storage=storage_url)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 3
    assert all(t.state == TrialState.PRUNED for t in trials)
    # Pruned at the first step after the warm-up, with reports from the user's network.
    assert all(sorted(t.intermediate_values) == [1, 2] for t in trials)
    assert all(0.0 <= v <= 1.0 for t in trials for v in t.intermediate_values.values())


def test_user_model_reaches_a_real_accuracy(runner: CliRunner, write_space, csv_path: Path,
                                            storage_url: str) -> None:
    space = write_space({"task": {"epochs": 15}, "pruner": {"name": "none"},
                         "params": {"hidden": 16, "layers": 1, "lr": 0.01}})
    result = runner.invoke(cli, ["start", "--space", str(space), "--study", "acc",
                                 "--storage", storage_url, "--trials", "1", "--quiet",
                                 "--data", str(csv_path), "--target", "label",
                                 "--model", f"{EXAMPLE}:build"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="acc", storage=storage_url)
    assert study.best_value > 0.8  # a linear rule: the residual MLP learns it


@pytest.mark.parametrize(("extra", "message"), [
    (["--target", "nope"], "--target column 'nope' does not exist"),
    (["--target", "label", "--dataset", "wine"], "and --dataset wine both name the data"),
    (["--target", "label", "--model", "no_such_module_xyz:build"], "cannot import"),
    (["--target", "label", "--model", f"{EXAMPLE}:missing"], "has no function 'missing'"),
])
def test_bad_user_data_or_model_is_one_line(runner: CliRunner, write_space, csv_path: Path,
                                            storage_url: str, db_path: Path,
                                            extra: list[str], message: str) -> None:
    space = write_space({"task": {"epochs": 2}, "params": {"hidden": 8}})
    result = runner.invoke(cli, ["start", "--space", str(space), "--storage", storage_url,
                                 "--trials", "1", "--quiet", "--data", str(csv_path), *extra])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not db_path.exists()  # nothing written


@pytest.mark.parametrize(("builder", "extra", "message"), [
    ("boom", [], "the builder raised ValueError: my bug"),
    ("bad", [], "must return a torch.nn.Module, but returned int"),
    ("plain", ["--aux-target", "side"], "aux_weight > 0 needs a model with an auxiliary head"),
])
def test_a_bad_builder_is_reported_before_the_study_exists(
        runner: CliRunner, write_space, csv_path: Path, storage_url: str, db_path: Path,
        tmp_path: Path, builder: str, extra: list[str], message: str) -> None:
    """Not as the first failed trial of a study created meanwhile, whose name the
    corrected command could then not use (its space differs)."""
    module = tmp_path / "mm.py"
    module.write_text("import torch.nn as nn\n"
                      "def boom(config, input_shape, n_outputs):\n    raise ValueError('my bug')\n"
                      "def bad(config, input_shape, n_outputs):\n    return 42\n"
                      "def plain(config, input_shape, n_outputs):\n"
                      "    return nn.Linear(input_shape[0], n_outputs)\n")
    space = write_space({"task": {"epochs": 1},
                         "params": {"hidden": 8, "aux_weight": {"low": 0.1, "high": 0.5}}})
    result = runner.invoke(cli, ["start", "--space", str(space), "--storage", storage_url,
                                 "--trials", "1", "--quiet", "--data", str(csv_path),
                                 "--target", "label", "--model", f"{module}:{builder}", *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert "no model built for 5 random draws" in result.output and "aux_weight=" in result.output
    assert not db_path.exists()


def test_the_check_refuses_no_builder_that_builds_some_configs(
        runner: CliRunner, write_space, csv_path: Path, storage_url: str,
        tmp_path: Path) -> None:
    """The check before the study refuses only a builder that builds nothing: one that
    rejects some widths gets its study, and those trials fail as they did before."""
    module = tmp_path / "picky.py"
    module.write_text("import torch.nn as nn\n"
                      "def build(config, input_shape, n_outputs):\n"
                      "    if config['hidden'] % 16:\n"
                      "        raise ValueError('hidden must be a multiple of 16')\n"
                      "    return nn.Linear(input_shape[0], n_outputs)\n")
    space = write_space({"seed": 3, "task": {"epochs": 1}, "sampler": {"name": "random"},
                         "params": {"hidden": {"choices": [16, 24, 32, 48]}}})
    result = runner.invoke(cli, ["start", "--space", str(space), "--storage", storage_url,
                                 "--trials", "6", "--quiet", "--data", str(csv_path),
                                 "--target", "label", "--model", f"{module}:build"])
    assert "no model built" not in result.output
    trials = optuna.load_study(study_name="tiny", storage=storage_url).trials
    assert trials
    for t in trials:
        assert (t.state.name == "FAIL") == (t.params["hidden"] == 24), (t.state, t.params)


def test_aux_target_column_trains_an_auxiliary_head(runner: CliRunner, write_space,
                                                    csv_path: Path, storage_url: str) -> None:
    space = write_space({"task": {"epochs": 3}, "pruner": {"name": "none"},
                         "params": {"hidden": 16, "layers": 1, "aux_weight": 0.5}})
    args = ["start", "--space", str(space), "--storage", storage_url, "--trials", "1",
            "--quiet", "--data", str(csv_path), "--target", "label"]
    with_aux = runner.invoke(cli, [*args, "--study", "aux", "--aux-target", "side"])
    assert with_aux.exit_code == 0, with_aux.output
    without = runner.invoke(cli, [*args, "--study", "noaux"])
    assert without.exit_code == 0, without.output
    import sqlalchemy

    engine = sqlalchemy.create_engine(storage_url)
    losses = {}
    for name in ("aux", "noaux"):
        trial = optuna.load_study(study_name=name, storage=storage_url).trials[0]
        assert trial.state == TrialState.COMPLETE
        with engine.connect() as conn:
            losses[name] = [row[0] for row in conn.execute(sqlalchemy.text(
                "SELECT train_loss FROM tuner_epochs WHERE trial_id = :t ORDER BY epoch"),
                {"t": trial._trial_id})]
    engine.dispose()
    # Same seed, same data: only the auxiliary loss differs, and it changes training.
    assert len(losses["aux"]) == len(losses["noaux"]) == 3
    assert losses["aux"] != losses["noaux"]
    bad = runner.invoke(cli, [*args, "--study", "bad", "--aux-target", "nope"])
    assert bad.exit_code == 2
    assert "--aux-target column 'nope' does not exist" in bad.output


def test_user_model_is_exported_loaded_and_predicts(runner: CliRunner, write_space,
                                                    csv_path: Path, storage_url: str,
                                                    tmp_path: Path) -> None:
    import tuner

    space = write_space({"task": {"epochs": 8}, "pruner": {"name": "none"},
                         "params": {"hidden": 16, "layers": 1, "batchnorm": True, "lr": 0.01}})
    result = runner.invoke(cli, ["start", "--space", str(space), "--study", "exp",
                                 "--storage", storage_url, "--trials", "2", "--quiet",
                                 "--data", str(csv_path), "--target", "label",
                                 "--model", f"{EXAMPLE}:build"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "model.pt"
    exported = runner.invoke(cli, ["export", "--study", "exp", "--storage", storage_url,
                                   "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    model = tuner.load_model(out)
    assert type(model.network).__name__ == "ResidualMLP"  # the user's class, rebuilt
    assert not model.training
    frame = pd.read_csv(csv_path)
    predicted = model.predict(frame[["a", "b", "c", "d", "side"]].to_numpy())
    assert set(predicted) <= {"pos", "neg"}
    accuracy = float(np.mean(np.array(predicted) == frame["label"].to_numpy()))
    assert accuracy > 0.8
    # The command line gives the same predictions, from the CSV's named columns.
    cli_out = runner.invoke(cli, ["predict", "--model", str(out), "--data", str(csv_path)])
    assert cli_out.exit_code == 0, cli_out.output
    lines = cli_out.output.strip().splitlines()
    assert lines[0] == "prediction" and lines[1:] == predicted


@pytest.mark.parametrize(("body", "message"), [
    ("return nn.Linear(input_shape[0], n_outputs + 3)",
     "your model returns outputs of shape [2, 5] for a batch of 2, but the classification "
     "loss needs [2, 2] (batch, classes)"),
    ("return nn.Sequential(nn.Linear(input_shape[0], 1), nn.Flatten(0))",
     "your model returns outputs of shape [2] for a batch of 2, but the classification "
     "loss needs [2, 2] (batch, classes)"),
    ("return Ints()",
     "your model must return a floating-point tensor of logits, but returned a tensor of "
     "torch.int64"),
    ("return nn.Linear(input_shape[0] + 1, n_outputs)",
     "your model's forward pass fails on a batch of 2 validation examples of shape [2, 5]"),
])
def test_a_model_with_the_wrong_output_is_refused_before_the_study(
        runner: CliRunner, write_space, csv_path: Path, storage_url: str, db_path: Path,
        tmp_path: Path, body: str, message: str) -> None:
    """One forward pass on a tiny batch of the real data, before anything is written."""
    module = tmp_path / "wrong.py"
    module.write_text("import torch\nimport torch.nn as nn\n"
                      "class Ints(nn.Module):\n"
                      "    def forward(self, x):\n"
                      "        return torch.zeros(len(x), 2, dtype=torch.long)\n"
                      f"def build(config, input_shape, n_outputs):\n    {body}\n")
    space = write_space({"task": {"epochs": 1}, "params": {"hidden": 8}})
    result = runner.invoke(cli, ["start", "--space", str(space), "--storage", storage_url,
                                 "--trials", "1", "--quiet", "--data", str(csv_path),
                                 "--target", "label", "--model", f"{module}:build"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert not db_path.exists()
