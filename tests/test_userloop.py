"""Your own training loop (`--objective FILE.py:function`): the tuner's budget, pruning,
early stopping, storage and recovery around `fn(config, report)`, and helpers that give
such a loop the catalogue's exact semantics."""

from __future__ import annotations

import json
import math
import signal
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from optuna.trial import TrialState

import tuner
from tests.test_workers import states, wait_for
from tests.test_workers import tuner as run
from tuner.cli import cli
from tuner.data.builtin import load_splits
from tuner.train.config import Config, TrialConfig
from tuner.train.loop import _batch_sizes, build_for, train
from tuner.train.metrics import METRICS
from tuner.train.regularizers import penalized_weights
from tuner.train.regularizers import penalty as weight_penalty
from tuner.train.seeding import seed_everything

# -- the helpers, held to the built-in loop ------------------------------------------------

CONFIGS = [
    TrialConfig(epochs=5, seed=4, hidden=16, layers=2, l1=1e-4, l2=1e-3, max_norm=1.5,
                optimizer="momentum", optimizer_hyper=(("lr", 0.05), ("momentum", 0.9)),
                schedule="step", schedule_hyper=(("gamma", 0.5), ("step_size", 2))),
    TrialConfig(epochs=4, seed=7, hidden=32, batch_size=32, l2=1e-4, optimizer="adam",
                optimizer_hyper=(("betas", (0.8, 0.99)), ("lr", 0.01))),
]


def own_loop(config: Config, data: Any) -> list[float]:
    """The built-in loop, rewritten as a user would with the helpers."""
    model = build_for(config.trial, data)
    optimizer = tuner.optimizer_for(model, config)
    scheduler = tuner.scheduler_for(optimizer, config)
    sizes = _batch_sizes(data.n_train, config.batch_size)
    values = []
    for _ in range(config.epochs):
        model.train()
        order = torch.randperm(data.n_train)
        for x, y in zip(data.x_train[order].split(sizes), data.y_train[order].split(sizes),
                        strict=True):
            loss = F.cross_entropy(model(x), y) + tuner.penalty(model, config)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            tuner.regularize_step(model, config)
        model.eval()
        with torch.no_grad():
            values.append((model(data.x_val).argmax(1) == data.y_val).double().mean().item())
        scheduler.step()
    return values


@pytest.mark.parametrize("config", CONFIGS)
def test_a_loop_of_yours_with_the_helpers_trains_the_builtin_loops_curve(
        config: TrialConfig) -> None:
    data = load_splits("iris", seed=0)
    seed_everything(config.seed)
    builtin = train(build_for(config, data), data, config, metric=METRICS["accuracy"])
    seed_everything(config.seed)
    assert own_loop(Config(config), data) == [m.val_metric for m in builtin.history]


def test_the_penalty_and_max_norm_helpers_follow_the_catalogue() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),
                                torch.nn.Linear(8, 2))
    config = Config(TrialConfig(epochs=1, l1=0.01, l2=0.1, max_norm=0.5))
    weights = [model[0].weight, model[2].weight]  # not the biases, not batch norm
    expected = 0.01 * sum(w.abs().sum() for w in weights) + 0.05 * sum(
        w.pow(2).sum() for w in weights)
    assert torch.allclose(tuner.penalty(model, config), expected)
    assert tuner.penalty(model, Config(TrialConfig(epochs=1))).item() == 0.0
    tuner.regularize_step(model, config)
    for w in weights:
        assert w.norm(dim=1).max() <= 0.5 + 1e-6
    assert penalized_weights(model) == weights
    assert torch.equal(weight_penalty(weights, 0.01, 0.1), tuner.penalty(model, config))
    optimizer = tuner.optimizer_for(model, CONFIGS[0])
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.param_groups[0]["momentum"] == 0.9
    scheduler = tuner.scheduler_for(optimizer, CONFIGS[0])
    assert type(scheduler) is torch.optim.lr_scheduler.StepLR and scheduler.step_size == 2


# -- the objective through `tuner start` ---------------------------------------------------

LOOP = '''
import json, math, os, time
import torch
import torch.nn.functional as F
import tuner

def record(**what):
    with open(os.environ["RECORD"], "a") as out:
        out.write(json.dumps(what) + "\\n")

def fit(config, report):
    """A real loop: an MLP on the task's data, with the trial's knobs."""
    data = config.data()
    width = round(8 * config.user["width"])
    model = torch.nn.Sequential(torch.nn.Linear(data.n_features, width), torch.nn.ReLU(),
                                torch.nn.Linear(width, data.n_outputs)).to(config.device)
    optimizer = tuner.optimizer_for(model, config)
    best = 0.0
    for epoch in range(1, config.epochs + 1):
        loss = F.cross_entropy(model(data.x_train), data.y_train) + tuner.penalty(model, config)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        with torch.no_grad():
            accuracy = (model(data.x_val).argmax(1) == data.y_val).float().mean().item()
        best = max(best, accuracy)
        stop = report(epoch, accuracy, train_loss=loss.item(), width=width)
        record(number=config.number, epoch=epoch, stop=stop, seed=config.seed,
               user=dict(config.user), lr=config.lr, device=str(config.device))
        if stop:
            break
    return best

def flat(config, report):
    for epoch in range(1, config.epochs + 1):
        if report(epoch, 0.5):
            record(number=config.number, stopped=epoch)
            return None  # the best value reported

def raises(config, report):
    report(1, 0.5)
    raise ValueError(f"my bug in trial {config.number}")

def returns(config, report):
    report(1, 0.5)
    return os.environ["RETURN"]

def backwards(config, report):
    report(2, 0.5)
    report(1, 0.5)

class State:
    pass

def pickled(config, report):
    report(1, 0.5, checkpoint=State())
    return 0.5

def unsaveable(config, report):
    report(1, 0.5, checkpoint=lambda: 0)
    return 0.5

def clash(config, report):
    report(1, 0.5, value=0.3)

def prunes(config, report):
    report(1, 0.5)
    raise __import__("optuna").TrialPruned()

def slow(config, report):
    """Checkpoints every epoch; says what it resumed from."""
    start = config.resume_epoch + 1
    if config.resume is not None:
        assert config.resume["epoch"] == config.resume_epoch
    for epoch in range(start, config.epochs + 1):
        time.sleep(0.2)
        report(epoch, epoch / 100, resumed=config.resume_epoch, checkpoint={
            "epoch": epoch, "weights": torch.full((3,), float(epoch))})
    return config.epochs / 100

def one_argument(config):
    return 0.0
'''


@pytest.fixture
def loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    path = tmp_path / "loop.py"
    path.write_text(LOOP)
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("RECORD", str(record))
    return path, record


def _space(write_space: Any, **task: Any) -> Path:
    return write_space({"task": {"dataset": "iris", "epochs": 6, "direction": "maximize",
                                 "metric": "accuracy", **task},
                        "sampler": {"name": "random"}, "pruner": {"name": "none"},
                        "params": {"lr": {"low": 0.01, "high": 0.1, "log": True},
                                   "l2": {"low": 1e-5, "high": 1e-3, "log": True}},
                        "user_params": {"width": {"low": 1.0, "high": 3.0}}})


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_an_objective_runs_the_budget_with_the_trials_config_and_records_everything(
        runner: CliRunner, write_space: Any, storage_url: str, loop: tuple[Path, Path]) -> None:
    path, record = loop
    result = runner.invoke(cli, ["start", "--space", str(_space(write_space)), "--storage",
                                 storage_url, "--study", "own", "--trials", "4",
                                 "--objective", f"{path}:fit"])
    assert result.exit_code == 0, result.output
    assert f"iris / objective {path}:fit" in result.output
    assert "4/4 finished (0 pruned, 0 failed)" in result.output
    study = optuna.load_study(study_name="own", storage=storage_url)
    trials = study.get_trials()
    seen = _records(record)
    for trial in trials:
        mine = [r for r in seen if r["number"] == trial.number]
        assert len(mine) == 6 and not any(r["stop"] for r in mine)
        assert mine[0]["user"] == {"width": trial.params["width"]}
        assert mine[0]["lr"] == trial.params["lr"] and mine[0]["device"] == "cpu"
        assert mine[0]["seed"] == trial.user_attrs["seed"]
        assert trial.value == max(trial.intermediate_values.values())
    # The per-epoch rows, with the function's own metric, are what `tuner curves` shows.
    curves = runner.invoke(cli, ["curves", "--study", "own", "--storage", storage_url,
                                 "--trial", "0", "--format", "json"])
    rows = json.loads(curves.output)
    assert [r["epoch"] for r in rows] == list(range(1, 7))
    assert [r["val_metric"] for r in rows] == [trials[0].intermediate_values[e]
                                               for e in range(1, 7)]
    assert all(r["width"] == round(8 * trials[0].params["width"]) for r in rows)
    assert all(r["train_loss"] > 0 for r in rows)
    best = runner.invoke(cli, ["best", "--study", "own", "--storage", storage_url,
                               "--format", "json"])
    assert json.loads(best.output)[0]["best_epoch"] is not None


def test_report_says_stop_when_the_pruner_prunes(runner: CliRunner, write_space: Any,
                                                 storage_url: str,
                                                 loop: tuple[Path, Path]) -> None:
    path, record = loop
    space = _space(write_space)
    text = space.read_text().replace("pruner:\n  name: none",
                                     "pruner:\n  name: threshold\n  lower: 1.5\n"
                                     "  n_warmup_steps: 2")
    space.write_text(text)
    result = runner.invoke(cli, ["start", "--space", str(space), "--storage", storage_url,
                                 "--study", "p", "--trials", "2", "--quiet",
                                 "--objective", f"{path}:fit"])
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="p", storage=storage_url).trials
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    for trial in trials:
        mine = [r for r in _records(record) if r["number"] == trial.number]
        # Pruned at the end of the warm-up (step 2): the function saw True and stopped.
        assert [r["stop"] for r in mine] == [False, True]
        assert sorted(trial.intermediate_values) == [1, 2]
    with sqlalchemy.create_engine(storage_url).connect() as conn:
        outcomes = {o for o, in conn.execute(sqlalchemy.text("SELECT outcome FROM tuner_trials"))}
    assert outcomes == {"pruned"}


def test_report_says_stop_when_early_stopping_runs_out_of_patience(
        runner: CliRunner, write_space: Any, storage_url: str, loop: tuple[Path, Path]) -> None:
    path, record = loop
    space = _space(write_space, epochs=20)
    space.write_text(space.read_text() + "early_stopping: {patience: 3}\n")
    result = runner.invoke(cli, ["start", "--space", str(space), "--storage", storage_url,
                                 "--study", "e", "--trials", "1", "--quiet",
                                 "--objective", f"{path}:flat"])
    assert result.exit_code == 0, result.output
    trial = optuna.load_study(study_name="e", storage=storage_url).trials[0]
    # The value never improves after epoch 1: patience 3 stops it at epoch 4.
    assert _records(record) == [{"number": 0, "stopped": 4}]
    assert trial.state == TrialState.COMPLETE and trial.value == 0.5  # None: the best reported
    assert sorted(trial.intermediate_values) == [1, 2, 3, 4]


@pytest.mark.parametrize(("function", "env", "message"), [
    ("raises", {}, "objective {loop}:raises: raised ValueError: my bug in trial 4"),
    ("returns", {"RETURN": "0.9x"}, "objective {loop}:returns: must return the trial's value "
                                    "(a number, or None), but returned str"),
    ("backwards", {}, "raised ValueError: report(): epoch must be an integer > 2 (the last "
                      "reported), but got 1"),
    ("pickled", {}, "report(checkpoint=...): the checkpoint cannot be read back with "
                    "torch.load(weights_only=True)"),
    ("unsaveable", {}, "report(checkpoint=...): torch.save cannot write the checkpoint"),
    ("clash", {}, "raised ValueError: report(): 'value' is given twice (it is the trial's "
                  "own; name your metric otherwise)"),
])
def test_a_function_that_fails_fails_its_trials_and_start_says_why_in_one_line(
        runner: CliRunner, write_space: Any, storage_url: str, loop: tuple[Path, Path],
        monkeypatch: pytest.MonkeyPatch, function: str, env: dict[str, str],
        message: str) -> None:
    path, _ = loop
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = runner.invoke(cli, ["start", "--space", str(_space(write_space)), "--storage",
                                 storage_url, "--study", "f", "--trials", "2", "--quiet",
                                 "--objective", f"{path}:{function}", "--checkpoint-every",
                                 "0"])
    expected = message.format(loop=path)
    assert result.exit_code == 1
    assert result.output.startswith("Error: 5 trials in a row failed; the last error: ")
    assert expected in result.output and result.output.count("\n") == 1
    trials = optuna.load_study(study_name="f", storage=storage_url).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 5
    assert all(t.user_attrs["error"].startswith(f"objective {path}:{function}: ")
               for t in trials)
    assert expected in trials[-1].user_attrs["error"]
    reported = {"backwards": {2: 0.5}, "clash": {}}.get(function, {1: 0.5})
    assert all(t.intermediate_values == reported for t in trials)  # kept, up to the failure


def test_a_trial_that_fails_among_good_ones_is_named_in_the_summary(
        runner: CliRunner, write_space: Any, storage_url: str, tmp_path: Path) -> None:
    path = tmp_path / "odd.py"
    path.write_text("def fit(config, report):\n"
                    "    if config.number == 1:\n        raise KeyError('gone')\n"
                    "    report(1, 0.5)\n    return 0.5\n")
    result = runner.invoke(cli, ["start", "--space", str(_space(write_space)), "--storage",
                                 storage_url, "--trials", "3", "--quiet",
                                 "--objective", f"{path}:fit"])
    assert result.exit_code == 0, result.output
    assert "3/3 finished (0 pruned, 1 failed)" in result.output
    assert f"Last failure: trial #1: objective {path}:fit: raised KeyError: 'gone'" \
        in result.output


def test_a_function_may_raise_trial_pruned(runner: CliRunner, write_space: Any,
                                          storage_url: str, loop: tuple[Path, Path]) -> None:
    path, _ = loop
    result = runner.invoke(cli, ["start", "--space", str(_space(write_space)), "--storage",
                                 storage_url, "--trials", "2", "--quiet",
                                 "--objective", f"{path}:prunes"])
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="tiny", storage=storage_url).trials
    assert [(t.state, t.value) for t in trials] == [(TrialState.PRUNED, 0.5)] * 2


@pytest.mark.parametrize(("args", "message"), [
    (["--objective", "{loop}:one_argument"],
     "Error: --objective: '{loop}:one_argument': must take (config, report), but its "
     "signature is (config)"),
    (["--objective", "{tmp}/nowhere.py:fit"], "Error: --objective: '{tmp}/nowhere.py:fit': no "
                                              "such file"),
    (["--objective", "{loop}:missing"], "has no function 'missing'"),
    (["--objective", "fit"], "Error: --objective: expected package.module:function or "
                             "file.py:function, but got 'fit'"),
    (["--objective", "{loop}:fit", "--metric", "f1"],
     "task.direction: an objective of yours ({loop}:fit) needs a direction"),
    (["--objective", "{loop}:fit", "--engine", "fused"],
     "the space's training function (objective {loop}:fit) is yours; use --engine sequential"),
    (["--objective", "{loop}:fit", "--precision", "bf16"],
     "--precision and --compile apply to the tuner's own training loop"),
    (["--objective", "{loop}:fit", "--loss", "{loop}:fit"],
     "Error: --loss: applies to the tuner's own training loop"),
])
def test_bad_objectives_are_one_line_exit_2_and_nothing_written(
        runner: CliRunner, write_space: Any, storage_url: str, db_path: Path,
        loop: tuple[Path, Path], tmp_path: Path, args: list[str], message: str) -> None:
    path, _ = loop
    space = write_space({"task": {"dataset": "iris", "epochs": 2, "metric": "accuracy"},
                         "params": {"hidden": 8}})
    args = [a.format(loop=path, tmp=tmp_path) for a in args]
    result = runner.invoke(cli, ["start", "--space", str(space), "--storage", storage_url,
                                 "--quiet", *args])
    assert result.exit_code == 2, result.output
    assert message.format(loop=path, tmp=tmp_path) in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert not db_path.exists()


def test_the_python_api_takes_a_function_object(write_space: Any, storage_url: str) -> None:
    calls = []

    def fit(config: Config, report: Any) -> float:
        calls.append(config.number)
        value = 1.0 - config.user["width"] / 10
        report(epoch=1, value=value, extra=2.0)  # by keyword too
        return value

    space = _space(write_space)
    study = tuner.optimize(space, objective=fit, n_trials=3, storage=storage_url,
                           study_name="api")
    assert calls == [0, 1, 2]
    assert study.best_value == max(1.0 - t.params["width"] / 10 for t in study.trials)
    # Resumed with the same function: nothing left to do.
    again = tuner.optimize(space, objective=fit, n_trials=3, storage=storage_url,
                           study_name="api")
    assert calls == [0, 1, 2] and len(again.trials) == 3


def test_a_plain_value_needs_no_direction_only_a_name(runner: CliRunner, write_space: Any,
                                                      storage_url: str,
                                                      loop: tuple[Path, Path]) -> None:
    """A built-in metric's name sets the direction; --direction minimize flips a study."""
    path, _ = loop
    space = write_space({"task": {"dataset": "iris", "epochs": 2}, "sampler": {"name": "random"},
                         "pruner": {"name": "none"}, "params": {"lr": 0.05},
                         "user_params": {"width": 2.0}})
    result = runner.invoke(cli, ["start", "--space", str(space), "--storage", storage_url,
                                 "--study", "min", "--trials", "1", "--quiet", "--objective",
                                 f"{path}:fit", "--metric", "error", "--direction", "minimize"])
    assert result.exit_code == 0, result.output
    assert "validation error" in result.output
    assert optuna.load_study(study_name="min", storage=storage_url).direction.name == "MINIMIZE"


# -- workers and crashes, with real processes ------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_workers_running_an_objective_reach_exactly_the_budget(
        backend: str, write_space: Any, tmp_path: Path, loop: tuple[Path, Path],
        request: pytest.FixtureRequest) -> None:
    path, _ = loop
    url = (request.getfixturevalue("pg_url") if backend == "postgres"
           else f"sqlite:///{tmp_path / 'tuner.db'}")
    study = f"own-{uuid.uuid4().hex[:8]}"  # PostgreSQL's database outlives the test
    proc = run("start", "--space", str(_space(write_space)), "--study", study, "--storage",
               url, "--trials", "9", "--workers", "2", "--quiet", "--objective", f"{path}:fit")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    counts = states(url.replace("postgresql://", "postgresql+psycopg://"), study)
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == 9
    assert counts[TrialState.RUNNING] == 0 and counts[TrialState.FAIL] == 0
    # The workers' trials wrote their rows and their own metric, on either database.
    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        ids = [i for i, in conn.execute(sqlalchemy.text(
            "SELECT t.trial_id FROM trials t JOIN studies s ON s.study_id = t.study_id "
            "WHERE s.study_name = :s"), {"s": study})]
        names = conn.execute(sqlalchemy.text(
            "SELECT COUNT(*) FROM tuner_epoch_metrics WHERE name = 'width' AND trial_id IN "
            f"({', '.join(map(str, ids))})")).scalar()
    engine.dispose()
    assert names == 9 * 6


@pytest.mark.slow
def test_kill_9_of_an_objective_resumes_the_retry_from_its_last_checkpoint(
        write_space: Any, tmp_path: Path, loop: tuple[Path, Path]) -> None:
    path, _ = loop
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    space = _space(write_space, epochs=40)
    args = ["start", "--space", str(space), "--study", "crash", "--storage", url, "--trials",
            "1", "--quiet", "--objective", f"{path}:slow"]
    engine = sqlalchemy.create_engine(url)

    def checkpointed() -> int:
        with engine.connect() as conn:
            try:
                return int(conn.execute(sqlalchemy.text(
                    "SELECT MAX(epoch) FROM tuner_checkpoints")).scalar() or 0)
            except sqlalchemy.exc.OperationalError:
                return 0

    victim = run(*args, "--checkpoint-every", "0")
    wait_for(lambda: checkpointed() >= 3, timeout=120)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    assert states(url, "crash")[TrialState.RUNNING] == 1
    survivor = run(*args)
    out, _ = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, out
    trials = optuna.load_study(study_name="crash", storage=url).get_trials()
    dead = next(t for t in trials if t.state == TrialState.FAIL)
    retry = next(t for t in trials if t.state == TrialState.COMPLETE)
    resumed = retry.user_attrs["resumed_from_epoch"]
    assert resumed >= 3 and retry.params == dead.params and retry.value == 0.4
    # The retry's curve: the dead trial's epochs, re-reported, then its own from there on.
    assert sorted(retry.intermediate_values) == list(range(1, 41))
    assert all(retry.intermediate_values[e] == dead.intermediate_values[e]
               for e in range(1, resumed + 1))
    with engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text(
            "SELECT epoch, value FROM tuner_epoch_metrics WHERE trial_id = :t AND name = "
            "'resumed' ORDER BY epoch"), {"t": retry._trial_id}).all()
        left = conn.execute(sqlalchemy.text("SELECT COUNT(*) FROM tuner_checkpoints")).scalar()
    engine.dispose()
    # Epochs after the checkpoint ran in the retry, which saw config.resume_epoch.
    assert [e for e, v in rows if v == resumed] == list(range(resumed + 1, 41))
    assert left == 0  # the finished trial's checkpoint is gone
    assert math.isclose(retry.value, 0.4)


def test_a_checkpoints_random_streams_come_back_through_the_safe_loader() -> None:
    """A retried loop draws what the uninterrupted one would have: torch's, NumPy's and
    Python's generators are in the checkpoint, read back with weights_only."""
    import io
    import random

    import numpy as np

    from tuner.run.userloop import rng_states, set_rng_states

    seed_everything(11)
    torch.rand(3), np.random.rand(2), random.random()
    buffer = io.BytesIO()
    torch.save(rng_states(torch.device("cpu")), buffer)
    expected = (torch.rand(4).tolist(), np.random.rand(4).tolist(), random.random())
    seed_everything(11)  # what a retry does first
    set_rng_states(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True),
                   torch.device("cpu"))
    assert (torch.rand(4).tolist(), np.random.rand(4).tolist(), random.random()) == expected


def test_the_python_api_names_an_unknown_argument() -> None:
    with pytest.raises(tuner.UsageError, match=r"tuner.optimize\(\): unknown argument 'study';"
                                               r" it takes space, .* study_name"):
        tuner.optimize("quick", study="x")
