"""Read-back commands: ``tuner studies``, ``trials``, ``best`` and ``curves``.

They open the database without changing it (no table, view or pragma is created) and
read it with SQL; output is a table, CSV or JSON.
"""

from __future__ import annotations

import click

from tuner import queries
from tuner.cli import cli
from tuner.cli._options import db_int, format_option, storage_option, study_option
from tuner.formatting import format_rows
from tuner.storage import TunerStorage

TRIAL_COLUMNS = ["number", "state", "value", "duration", "best_epoch"]
BEST_COLUMNS = ["number", "value", "test_metric", "best_epoch", "seed"]


def open_readonly(storage: str) -> TunerStorage:
    """Reading never creates a database or a table, and heartbeats are for workers."""
    return TunerStorage(storage, create=False, heartbeat=False).open()


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()] if text else []


@cli.command()
@storage_option
@format_option
def studies(storage: str, fmt: str) -> None:
    """List the studies: direction, trials by state, best value, created, last activity."""
    rows = queries.studies(open_readonly(storage))
    click.echo(format_rows(rows, queries.STUDY_COLUMNS, fmt), nl=False)


@cli.command()
@study_option
@storage_option
@click.option("--state", "states", multiple=True, type=click.Choice(queries.STATES),
              help="Only trials in this state (repeat for several).")
@click.option("--where", metavar="FILTER",
              help="Only trials that match, e.g. \"optimizer == 'adam' and dropout > 0.3\": "
                   "parameters, value, state, number, duration, best_epoch, seed, test_metric "
                   "compared with == != < <= > >= or `in (...)`, joined by and/or/not.")
@click.option("--sort", metavar="COLUMNS",
              help="Sort by these columns, comma-separated; a leading - sorts descending "
                   "(e.g. -value,lr).")
@click.option("--best-first", is_flag=True, help="Complete trials first, best value first.")
@click.option("--limit", type=db_int(min=1), help="At most this many rows.")
@click.option("--columns", metavar="COLUMNS",
              help="Show these columns, comma-separated (default: number, state, value, "
                   "duration, best_epoch and every parameter); also epochs_run, seed, "
                   "test_metric, datetime_start, datetime_complete.")
@format_option
def trials(study: str, storage: str, states: tuple[str, ...], where: str | None,
           sort: str | None, best_first: bool, limit: int | None, columns: str | None,
           fmt: str) -> None:
    """One row per trial: state, value, duration (s), best epoch and every parameter.

    \b
    Example:
      tuner trials --study reg --where "optimizer == 'adam' and dropout > 0.3" \\
                   --sort -value --limit 10
    """
    shown = _names(columns)
    rows = queries.trials(open_readonly(storage), study, states=states, where=where,
                          sort=_names(sort), best_first=best_first, limit=limit,
                          columns=shown)
    flat = [{**r["params"], **{k: v for k, v in r.items() if k != "params"}} for r in rows]
    click.echo(format_rows(flat, shown or TRIAL_COLUMNS + queries.param_names(rows), fmt),
               nl=False)


@cli.command()
@study_option
@storage_option
@click.option("--top", type=db_int(min=1), default=1, show_default=True,
              help="Show the K best trials.")
@format_option
def best(study: str, storage: str, top: int, fmt: str) -> None:
    """The best trial(s): validation value, test metric, best epoch, seed and parameters."""
    rows = queries.best_trials(open_readonly(storage), study, top)
    flat = [{**r["params"], **{k: v for k, v in r.items() if k != "params"}} for r in rows]
    click.echo(format_rows(flat, BEST_COLUMNS + queries.param_names(rows), fmt), nl=False)


@cli.command()
@study_option
@storage_option
@click.option("--trial", "numbers", type=db_int(min=0), multiple=True, required=True,
              metavar="N", help="The trial's number (repeat for several trials).")
@format_option
def curves(study: str, storage: str, numbers: tuple[int, ...], fmt: str) -> None:
    """Per-epoch metrics of trials: train loss, val loss, val metric, learning rate, seconds.

    Further values a training function of yours reported (`report(epoch, value, f1=...)`)
    follow as columns of their own. Trials the tuner did not train (a plain Optuna study)
    show their intermediate values as val_metric.
    """
    rows = queries.curves(open_readonly(storage), study, list(dict.fromkeys(numbers)))
    click.echo(format_rows(rows, queries.curve_columns(rows), fmt), nl=False)
