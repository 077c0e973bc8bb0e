"""`tuner bench query` (tuner/bench/_query.py): the synthetic study Optuna reads back, and
the timings, on a small study (the 100,000-trial run is a benchmark, not a test)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from tuner import queries
from tuner.bench._query import SPACE, build_study, check_with_optuna, run_query_bench
from tuner.cli import cli
from tuner.storage import TunerStorage


def test_bulk_inserted_study_reads_back_through_optuna(storage_url: str) -> None:
    storage = TunerStorage(storage_url, heartbeat=False).open()
    first = build_study(storage, "synthetic", 300, steps=5)
    check_with_optuna(storage, "synthetic", first, 300)
    study = optuna.load_study(study_name="synthetic", storage=storage_url)
    trials = study.get_trials()
    assert len(trials) == 300
    assert all(set(t.params) == set(SPACE) for t in trials)
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            assert len(trial.intermediate_values) == 5
            assert trial.value == max(trial.intermediate_values.values())
        elif trial.state == TrialState.PRUNED:
            assert trial.value == trial.intermediate_values[max(trial.intermediate_values)]
    rows = queries.trials(storage, "synthetic", where="optimizer == 'adam' and dropout > 0.3")
    expected = [t.number for t in trials
                if t.params["optimizer"] == "adam" and t.params["dropout"] > 0.3]
    assert [r["number"] for r in rows] == expected and expected
    (best,) = queries.best_trials(storage, "synthetic")
    assert best["number"] == study.best_trial.number
    assert best["params"] == study.best_trial.params


@pytest.mark.slow
def test_timings_side_by_side(tmp_path: Path) -> None:
    runner = CliRunner()

    def command(args: list[str]) -> tuple[int, str]:
        result = runner.invoke(cli, args)
        return result.exit_code, result.output

    timings = run_query_bench(f"sqlite:///{tmp_path / 'b.db'}", command, n_trials=200, steps=3,
                              repeat=1, say=lambda line: None)
    assert [t.query.split()[0] for t in timings] == ["best", "best", "trials", "studies"]
    assert all(t.tuner_s > 0 and t.optuna_s > 0 for t in timings)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("tuner.cli._bench") is None,
                    reason="the `tuner bench` group (tuner/cli/_bench.py) is not there yet")
def test_bench_query_command(tmp_path: Path) -> None:
    from tuner.cli import cli

    result = CliRunner().invoke(cli, ["bench", "query", "--trials", "100", "--steps", "2",
                                      "--repeat", "1", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {r["query"].split()[0] for r in rows} == {"best", "trials", "studies"}
    assert all(r["speedup"] > 0 for r in rows)
