"""`tuner bench sampler` (tuner/bench/_sampler.py, tuner/cli/_bench.py): the prefilled
studies, the timings and the command's output, at tiny sizes (the 10,000-trial run is a
benchmark, not a test)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from click.testing import CliRunner
from optuna.trial import TrialState

from tuner.bench import SAMPLER_COLUMNS, run_sampler_bench, sampler_space
from tuner.bench._sampler import draw_trials, prefill
from tuner.cli import cli
from tuner.storage import TunerStorage

ARGS = ["bench", "sampler", "--sizes", "10,30", "--population", "1,4", "--asks", "4"]


def test_prefilled_study_reads_back_through_optuna(storage_url: str) -> None:
    space = sampler_space("quick")
    storage = TunerStorage(storage_url, heartbeat=False).open()
    drawn = draw_trials(space, 40)
    prefill(storage, space, "prefilled", drawn[:25])
    trials = optuna.load_study(study_name="prefilled", storage=storage_url).get_trials()
    assert [t.number for t in trials] == list(range(25))
    assert all(t.state == TrialState.COMPLETE and t.value is not None for t in trials)
    assert [t.params for t in trials] == [t.params for t in drawn[:25]]
    assert [t.values for t in trials] == [t.values for t in drawn[:25]]
    assert {"lr", "l2", "dropout", "optimizer"} <= set(trials[0].params)
    # The conditional branch: momentum's own parameter only where it was drawn.
    assert all(("momentum" in t.params) == (t.params["optimizer"] == "momentum")
               for t in trials)


def test_studies_hold_size_trials_before_timing_and_size_plus_asks_after(
        storage_url: str) -> None:
    seen: list[tuple[str, int, dict[TrialState, int]]] = []

    def on_study(storage: TunerStorage, name: str, moment: int) -> None:
        seen.append((name, moment, storage.state_counts(storage.study_id(name))))

    rows = run_sampler_bench(storage_url, sampler_space("quick"), sizes=[10, 30],
                             populations=[1, 4], asks=4, say=lambda line: None,
                             on_study=on_study)
    assert [(r.size, r.population, r.asks) for r in rows] == [
        (10, 1, 4), (10, 4, 4), (30, 1, 4), (30, 4, 4)]
    assert len(seen) == 8
    for (name, moment, counts), size in zip(seen, [10, 10, 10, 10, 30, 30, 30, 30],
                                            strict=True):
        expected = size if moment == 0 else size + 4
        assert counts[TrialState.COMPLETE] == expected, (name, moment, counts)
        assert sum(counts.values()) == expected
    for row in rows:
        assert row.ask_ms > 0 and row.create_ms > 0 and row.suggest_ms > 0
        assert row.tell_ms > 0 and row.trials_per_s > 0
        assert row.ask_p90_ms >= row.ask_ms


def test_population_is_asked_before_it_is_told(storage_url: str) -> None:
    """The fused engine's pattern: while a population is asked, the members asked before
    are RUNNING, so a sampler (constant liar) sees them."""
    from tuner.bench._sampler import time_point

    space = sampler_space("quick", "random")
    storage = TunerStorage(storage_url, heartbeat=False).open()
    prefill(storage, space, "pattern", draw_trials(space, 5))
    study = optuna.load_study(study_name="pattern", storage=storage.studies)
    running: list[int] = []
    ask = study.ask

    def counting_ask() -> optuna.Trial:
        running.append(len(study.get_trials(states=(TrialState.RUNNING,))))
        return ask()

    study.ask = counting_ask  # type: ignore[method-assign]
    time_point(study, space, population=3, asks=7)
    assert running == [0, 1, 2, 0, 1, 2, 0]
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 5 + 7


def test_sampler_option_replaces_the_spaces_sampler() -> None:
    assert sampler_space("quick").sampler.name == "tpe"
    assert sampler_space("quick", "random").sampler.name == "random"
    assert sampler_space("quick", "tpe") == sampler_space("quick")


def test_command_prints_a_row_per_size_and_population_as_table_and_json(
        tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, [*ARGS, "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["size"], r["population"]) for r in rows] == [(10, 1), (10, 4), (30, 1), (30, 4)]
    assert all(list(r) == list(SAMPLER_COLUMNS) for r in rows)
    assert all(r["sampler"] == "tpe" for r in rows)
    assert all(r[c] > 0 for r in rows for c in SAMPLER_COLUMNS if c != "sampler")
    assert "load average" in result.stderr and "optuna " in result.stderr

    url = f"sqlite:///{tmp_path / 'kept.db'}"
    result = runner.invoke(cli, [*ARGS, "--storage", url])
    assert result.exit_code == 0, result.output
    header, rule, *lines = result.stdout.splitlines()
    assert header.split() == list(SAMPLER_COLUMNS) and set(rule) <= {"-", " "}
    assert [line.split()[:4] for line in lines] == [
        ["tpe", "10", "1", "4"], ["tpe", "10", "4", "4"], ["tpe", "30", "1", "4"],
        ["tpe", "30", "4", "4"]]
    assert all(float(cell) > 0 for line in lines for cell in line.split()[1:])
    assert len(TunerStorage(url, create=False).open().study_names()) == 4


def test_command_rejects_bad_counts_and_samplers() -> None:
    runner = CliRunner()
    for extra in (["--sizes", "10,x"], ["--population", "0"], ["--sampler", "grid"]):
        result = runner.invoke(cli, ["bench", "sampler", *extra])
        assert result.exit_code == 2, (extra, result.output)


def test_against_optuna_times_each_point_on_optunas_tpe_too(tmp_path: Path) -> None:
    """--against-optuna: each point twice, the tuner's TPE then Optuna's, on equal
    studies (the same prefilled trials)."""
    seen: list[tuple[str, int]] = []

    def count(storage: TunerStorage, name: str, moment: int) -> None:
        if moment == 0:
            seen.append((name, len(optuna.load_study(study_name=name,
                                                     storage=storage.optuna).trials)))

    rows = run_sampler_bench(f"sqlite:///{tmp_path / 'both.db'}", sampler_space("quick"),
                             sizes=[12], populations=[1, 3], asks=3, say=lambda _: None,
                             on_study=count, against_optuna=True)
    assert [(r.sampler, r.population) for r in rows] == [
        ("tpe", 1), ("optuna-tpe", 1), ("tpe", 3), ("optuna-tpe", 3)]
    assert [n for _, n in seen] == [12] * 4 and len({name for name, _ in seen}) == 4
