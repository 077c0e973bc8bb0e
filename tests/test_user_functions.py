"""A loss and a metric of yours (`task.loss`, `task.metric`): held to the built-in ones
they equal, and what they raise or return wrongly fails the trial, not the study."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.trial import TrialState

from tuner.cli import cli
from tuner.data.builtin import load_splits
from tuner.errors import TrialFailed
from tuner.space import load_space
from tuner.train.config import TrialConfig
from tuner.train.loop import build_for, train
from tuner.train.metrics import METRICS, Metric, task_loss, task_metric
from tuner.train.seeding import seed_everything

FUNCTIONS = '''
import math
import torch
import torch.nn.functional as F

def cross_entropy(outputs, targets):
    return F.cross_entropy(outputs, targets)

def accuracy(outputs, targets):
    return (outputs.argmax(dim=-1) == targets).float().mean().item()

def mse(outputs, targets):
    return F.mse_loss(outputs.squeeze(-1), targets)

def mae(outputs, targets):
    return (outputs.squeeze(-1) - targets).abs().mean().item()

def raises(outputs, targets):
    raise ValueError("no metric today")

def nan(outputs, targets):
    return math.nan

def not_a_number(outputs, targets):
    return "high"

def vector(outputs, targets):
    return F.cross_entropy(outputs, targets, reduction="none")

def one_argument(outputs):
    return 0.0

def constant(outputs, targets):
    return torch.tensor(1.0)

def text(outputs, targets):
    return "0.5"
'''


@pytest.fixture
def functions(tmp_path: Path) -> Path:
    path = tmp_path / "fns.py"
    path.write_text(FUNCTIONS)
    return path


def _curve(data: Any, config: TrialConfig, metric: Metric, loss: Any = None) -> list[Any]:
    seed_everything(config.seed)
    model = build_for(config, data)
    result = train(model, data, config, metric=metric, loss=loss)
    return [(m.train_loss, m.val_loss, m.val_metric) for m in result.history]


CONFIG = TrialConfig(epochs=4, seed=3, hidden=16, layers=2, dropout=0.2, l2=1e-3,
                     batch_size=32, optimizer="momentum",
                     optimizer_hyper=(("lr", 0.05), ("momentum", 0.9)))


def test_a_loss_equal_to_cross_entropy_reproduces_the_builtin_curve_exactly(
        functions: Path) -> None:
    data = load_splits("iris", seed=0)
    task = load_space("quick", {"dataset": "iris", "loss": f"{functions}:cross_entropy"}).task
    builtin = _curve(data, CONFIG, METRICS["accuracy"])
    yours = _curve(data, CONFIG, METRICS["accuracy"], task_loss(task))
    assert yours == builtin


def test_a_loss_equal_to_mse_reproduces_the_builtin_regression_curve(functions: Path) -> None:
    data = load_splits("diabetes", seed=0)
    task = load_space("quick", {"dataset": "diabetes", "metric": "rmse",
                                "loss": f"{functions}:mse"}).task
    assert _curve(data, CONFIG, METRICS["rmse"], task_loss(task)) == _curve(
        data, CONFIG, METRICS["rmse"])


def test_a_metric_equal_to_accuracy_reproduces_the_builtin_metric(functions: Path) -> None:
    data = load_splits("iris", seed=0)
    space = load_space("quick", {"dataset": "iris", "metric": f"{functions}:accuracy",
                                 "direction": "maximize"})
    yours = task_metric(space.task)
    assert yours.fn is not None and yours.maximize and yours.label == "accuracy"
    builtin = [v for *_, v in _curve(data, CONFIG, METRICS["accuracy"])]
    assert [v for *_, v in _curve(data, CONFIG, yours)] == pytest.approx(builtin, abs=1e-7)


def test_a_regression_metric_sees_targets_in_their_own_units(functions: Path) -> None:
    """Regression targets are standardized for training; a metric of yours gets them back
    in the data's units, as the built-in MAE reports them."""
    data = load_splits("diabetes", seed=0)
    space = load_space("quick", {"dataset": "diabetes", "metric": f"{functions}:mae",
                                 "direction": "minimize"})
    builtin = [v for *_, v in _curve(data, CONFIG, METRICS["mae"])]
    yours = [v for *_, v in _curve(data, CONFIG, task_metric(space.task))]
    assert yours == pytest.approx(builtin, rel=1e-5)
    assert min(yours) > 10  # disease progression units, not standard deviations


@pytest.mark.parametrize(("name", "message"), [
    ("raises", "task.metric {fns}:raises: raised ValueError: no metric today"),
    ("nan", "task.metric {fns}:nan: returned nan (it must be a finite number)"),
    ("not_a_number", "task.metric {fns}:not_a_number: must return a number, but returned str"),
    ("text", "task.metric {fns}:text: must return a number, but returned str"),
])
def test_a_bad_metric_fails_its_trials_with_its_message_not_the_study(
        runner: CliRunner, write_space: Any, storage_url: str, functions: Path,
        name: str, message: str) -> None:
    space = write_space({"task": {"dataset": "iris", "epochs": 2,
                                  "metric": f"{functions}:{name}", "direction": "maximize"},
                         "sampler": {"name": "random"}, "pruner": {"name": "none"},
                         "params": {"hidden": 8}})
    result = runner.invoke(cli, ["start", "--space", str(space), "--storage", storage_url,
                                 "--trials", "2", "--quiet"])
    expected = message.format(fns=functions)
    # Every trial fails with the metric's message; after 5 in a row the run stops in one
    # line (exit 1), leaving the study as it is.
    assert result.exit_code == 1, result.output
    assert f"5 trials in a row failed; the last error: {expected}" in result.output
    assert "Traceback" not in result.output
    trials = optuna.load_study(study_name="tiny", storage=storage_url).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 5
    assert {t.user_attrs["error"] for t in trials} == {expected}


@pytest.mark.parametrize(("name", "message"), [
    ("constant", r"task.loss .*:constant: returned a tensor with no gradient; compute it from "
                 r"the outputs"),
    ("vector", r"task.loss .*:vector: must return a scalar \(0-d\) tensor, but returned a "
               r"tensor of shape \[32\]"),
])
def test_a_loss_that_cannot_train_fails_the_trial_saying_why(functions: Path, name: str,
                                                             message: str) -> None:
    data = load_splits("iris", seed=0)
    task = load_space("quick", {"dataset": "iris", "loss": f"{functions}:{name}"}).task
    with pytest.raises(TrialFailed, match=message):
        _curve(data, CONFIG, METRICS["accuracy"], task_loss(task))


@pytest.mark.parametrize(("task", "path", "message"), [
    ({"metric": "{fns}:accuracy"}, "task.direction",
     "a metric of yours ({fns}:accuracy) needs a direction (task.direction or --direction: "
     "maximize or minimize), but none is given"),
    ({"metric": "{fns}:accuracy", "direction": "up"}, "task.direction", "but got 'up'"),
    ({"metric": "{fns}:one_argument", "direction": "maximize"}, "task.metric",
     "'{fns}:one_argument': must take (outputs, targets), but its signature is (outputs)"),
    ({"metric": "{fns}:missing", "direction": "maximize"}, "task.metric",
     "has no function 'missing'"),
    ({"metric": "nowhere.py:f1", "direction": "maximize"}, "task.metric",
     "'nowhere.py:f1': no such file 'nowhere.py'"),
    ({"loss": "{fns}:one_argument"}, "task.loss", "must take (outputs, targets)"),
    ({"loss": "cross_entropy"}, "task.loss",
     "expected package.module:function or file.py:function, but got 'cross_entropy'"),
    ({"metric": "f1"}, "task.metric", "unknown metric 'f1'"),
])
def test_bad_functions_of_yours_are_one_line_before_anything_is_written(
        runner: CliRunner, write_space: Any, storage_url: str, db_path: Path,
        functions: Path, task: dict[str, str], path: str, message: str) -> None:
    task = {k: v.format(fns=functions) for k, v in task.items()}
    space = write_space({"task": {"dataset": "iris", "epochs": 2, **task},
                         "params": {"hidden": 8}})
    result = runner.invoke(cli, ["start", "--space", str(space), "--storage", storage_url,
                                 "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: {space}: {path}: ")
    assert message.format(fns=functions) in result.output
    assert result.output.count("\n") == 1
    assert not db_path.exists()


def test_a_metric_and_loss_of_yours_run_a_study_with_its_test_metric(
        runner: CliRunner, write_space: Any, storage_url: str, functions: Path) -> None:
    space = write_space({"task": {"dataset": "iris", "epochs": 6, "loss":
                                  f"{functions}:cross_entropy"},
                         "sampler": {"name": "random"}, "pruner": {"name": "none"},
                         "params": {"hidden": 16, "lr": 0.05}})
    result = runner.invoke(cli, ["start", "--space", str(space), "--storage", storage_url,
                                 "--trials", "2", "--metric", f"{functions}:accuracy",
                                 "--direction", "maximize", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "validation accuracy" in result.output and "test accuracy" in result.output
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    assert study.direction.name == "MAXIMIZE" and 0.5 < study.best_value <= 1.0


def test_the_metric_function_runs_on_the_device_outputs(functions: Path) -> None:
    """Your metric receives tensors (outputs [N, classes], integer targets [N])."""
    seen: list[tuple[Any, ...]] = []

    def record(outputs: torch.Tensor, targets: torch.Tensor) -> float:
        seen.append((outputs.shape, outputs.dtype, targets.shape, targets.dtype))
        return 0.5

    data = load_splits("iris", seed=0)
    _curve(data, TrialConfig(epochs=1, hidden=8), Metric("mine", "any", "maximize", record))
    assert seen == [(torch.Size([30, 3]), torch.float32, torch.Size([30]), torch.int64)]
