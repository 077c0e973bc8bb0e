"""`tuner rerun`: a CPU trial, complete or pruned, is replayed to the same curve."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from click.testing import CliRunner, Result
from optuna.trial import TrialState

from tuner.cli import cli
from tuner.export.rerun import rerun_trial
from tuner.storage import TunerStorage


def _invoke(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(cli, list(args))


def _study(runner: CliRunner, write_space: Any, space: dict[str, Any], url: str) -> TunerStorage:
    result = _invoke(runner, "start", "--space", str(write_space(space)), "--study", "r",
                     "--storage", url, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    return TunerStorage(url, create=False, heartbeat=False).open()


def _trials(db: TunerStorage, state: TrialState) -> list[optuna.trial.FrozenTrial]:
    sid = db.optuna.get_study_id_from_name("r")
    return [t for t in db.optuna.get_all_trials(sid) if t.state == state]


def test_rerun_of_a_complete_trial_reproduces_its_curve(
        runner: CliRunner, write_space: Any, tiny_space: dict[str, Any],
        storage_url: str) -> None:
    tiny_space["task"]["epochs"] = 3
    tiny_space["trials"] = 2
    db = _study(runner, write_space, tiny_space, storage_url)
    number = _trials(db, TrialState.COMPLETE)[-1].number
    result = _invoke(runner, "rerun", "--study", "r", "--trial", str(number), "--storage",
                     storage_url)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 + 3 + 1  # header, 3 epochs, verdict
    assert all(line.endswith("yes") for line in lines[1:4])
    assert "reproduced exactly" in lines[-1]


def test_rerun_of_a_pruned_trial_replays_up_to_where_it_was_pruned(
        runner: CliRunner, write_space: Any, tiny_space: dict[str, Any],
        storage_url: str) -> None:
    # A threshold this high prunes nearly every trial, at the first epoch below it.
    tiny_space["task"]["epochs"] = 4
    tiny_space["pruner"] = {"name": "threshold", "lower": 0.9}
    db = _study(runner, write_space, tiny_space, storage_url)
    pruned = _trials(db, TrialState.PRUNED)
    assert pruned
    replay = rerun_trial(db, "r", pruned[0].number)
    recorded = [pruned[0].intermediate_values[e] for e in sorted(pruned[0].intermediate_values)]
    assert replay.recorded == recorded
    assert replay.rerun == recorded
    assert replay.matches


def test_a_mixed_precision_trial_replays_in_its_precision(
        runner: CliRunner, write_space: Any, tiny_space: dict[str, Any],
        storage_url: str) -> None:
    """The precision is recorded with the trial, and the replay trains in it (a bf16
    curve is not float32's: on a regression's RMSE, a replay in float32 would not match)."""
    tiny_space["trials"] = 1
    tiny_space["task"] = {"dataset": "diabetes", "model": "mlp", "epochs": 3,
                          "metric": "rmse"}
    tiny_space["engine"] = {"precision": "bf16"}
    db = _study(runner, write_space, tiny_space, storage_url)
    trial = _trials(db, TrialState.COMPLETE)[0]
    assert trial.user_attrs["precision"] == "bf16"
    assert "compiled" not in trial.user_attrs and "engine" not in trial.user_attrs
    replay = rerun_trial(db, "r", trial.number)
    assert replay.precision == "bf16" and replay.caveats == []
    assert replay.matches, replay.rows()


def test_a_fused_trial_does_not_replay_and_the_error_says_why(
        runner: CliRunner, write_space: Any, tiny_space: dict[str, Any],
        storage_url: str) -> None:
    tiny_space["trials"] = 3
    tiny_space["task"]["epochs"] = 3
    tiny_space["engine"] = {"name": "fused", "population": 3}
    db = _study(runner, write_space, tiny_space, storage_url)
    replay = rerun_trial(db, "r", 0)
    assert replay.engine == "fused"
    assert any("fused population" in c for c in replay.caveats)
    with db.session() as conn:  # a curve the sequential replay cannot meet, whatever it is
        conn.exec_driver_sql("UPDATE tuner_epochs SET val_metric = val_metric + 0.5")
    result = _invoke(runner, "rerun", "--study", "r", "--trial", "0", "--storage", storage_url)
    assert result.exit_code == 1
    assert "(it trained in a fused population (its batch order" in result.output
    assert "Traceback" not in result.output


def test_a_changed_curve_fails_with_one_line(runner: CliRunner, write_space: Any,
                                             tiny_space: dict[str, Any],
                                             storage_url: str) -> None:
    tiny_space["trials"] = 1
    db = _study(runner, write_space, tiny_space, storage_url)
    with db.session() as conn:
        conn.exec_driver_sql("UPDATE tuner_epochs SET val_metric = val_metric + 0.5 "
                             "WHERE epoch = 2")
    result = _invoke(runner, "rerun", "--study", "r", "--trial", "0", "--storage", storage_url)
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: trial 0 of study 'r' did "
                                                             "not reproduce: 1 of 2 epochs")
    assert "(it ran on the CPU, one at a time, uncompiled, so it should have:" in result.output


@pytest.mark.parametrize(("args", "fragment"), [
    (("--study", "nope", "--trial", "0"), "no study 'nope'"),
    (("--study", "r", "--trial", "9"), "--trial 9: study 'r' has no trial 9"),
])
def test_rerun_usage_errors(runner: CliRunner, write_space: Any, tiny_space: dict[str, Any],
                            storage_url: str, args: tuple[str, ...], fragment: str) -> None:
    tiny_space["trials"] = 1
    _study(runner, write_space, tiny_space, storage_url)
    result = _invoke(runner, "rerun", *args, "--storage", storage_url)
    assert result.exit_code == 2
    assert fragment in result.output and len(result.output.strip().splitlines()) == 1
