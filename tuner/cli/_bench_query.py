"""``tuner bench query``: the read-back commands beside Optuna's API on a 100k-trial study."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from tuner.cli._bench import bench
from tuner.formatting import format_rows


@bench.command("query")
@click.option("--trials", "n_trials", type=click.IntRange(min=10), default=100_000,
              show_default=True, help="Trials in the synthetic study.")
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True,
              help="Intermediate values (epochs) per trial.")
@click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True,
              help="Time each tuner query this many times and report the median.")
@click.option("--storage", metavar="URL",
              help="An empty database to build the study in (default: a temporary SQLite "
                   "file, deleted afterwards).")
@click.option("--format", "fmt", type=click.Choice(("table", "csv", "json")), default="table",
              show_default=True, help="How to print the timings.")
def query(n_trials: int, steps: int, repeat: int, storage: str | None, fmt: str) -> None:
    """Time `tuner best --top 10`, `tuner trials --where ... --limit 50` and `tuner studies`
    against Optuna (study.best_trial, study.trials_dataframe()) on a synthetic study.

    \b
    Example:
      tuner bench query --trials 100000
    """
    from click.testing import CliRunner

    from tuner.bench import run_query_bench
    from tuner.cli import cli

    runner = CliRunner()

    def command(args: list[str]) -> tuple[int, str]:
        result = runner.invoke(cli, args)
        return result.exit_code, result.output

    def say(line: str) -> None:
        click.echo(line, err=True)

    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
        url = storage or f"sqlite:///{Path(tmp) / 'bench.db'}"
        timings = run_query_bench(url, command, n_trials=n_trials, steps=steps, repeat=repeat,
                                  say=say)
    rows = [{"query": t.query, "tuner_s": round(t.tuner_s, 4), "optuna_path": t.optuna_path,
             "optuna_s": round(t.optuna_s, 4), "speedup": round(t.speedup, 1)} for t in timings]
    click.echo(format_rows(rows, ["query", "tuner_s", "optuna_path", "optuna_s", "speedup"],
                           fmt), nl=False)
