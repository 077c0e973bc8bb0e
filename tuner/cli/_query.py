"""Read-back commands: ``tuner studies``, ``trials``, ``best`` and ``curves``.

They open the database without changing it (no table, view or pragma is created) and
read it with SQL; output is a table that fits the terminal, CSV or JSON (those two with
every column, exactly).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from tuner.catalogue import TRIAL_STATES
from tuner.cli import cli
from tuner.cli._options import db_int, format_option, storage_option, study_option
from tuner.errors import TunerError, UsageError
from tuner.formatting import format_rows

if TYPE_CHECKING:
    from tuner.storage import TunerStorage

# The queries (SQLAlchemy, Optuna) are imported inside the commands, so that `tuner --help`
# does not pay for them.

TRIAL_COLUMNS = ["number", "state", "value", "duration", "best_epoch"]
BEST_COLUMNS = ["number", "value", "test_metric", "best_epoch", "seed"]


def open_readonly(storage: str) -> TunerStorage:
    """Reading never creates a database or a table, and heartbeats are for workers."""
    from tuner.storage import TunerStorage

    return TunerStorage(storage, create=False, heartbeat=False).open()


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()] if text else []


all_params_option = click.option(
    "--all-params", is_flag=True,
    help="In a table, a column for every parameter; by default a parameter that is the "
         "same in every row shown is named once, below the table.")


@cli.command()
@storage_option
@format_option
def studies(storage: str, fmt: str) -> None:
    """List the studies: direction, trials by state, best value, created, last activity."""
    from tuner import queries
    from tuner.cli._display import output_width

    rows = queries.studies(open_readonly(storage))
    width = output_width() if fmt == "table" else None
    click.echo(format_rows(rows, queries.STUDY_COLUMNS, fmt, width=width), nl=False)


@cli.command()
@study_option
@storage_option
@click.option("--state", "states", multiple=True, type=click.Choice(TRIAL_STATES),
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
              help="Show exactly these columns, comma-separated (default: number, state, "
                   "value, duration, best_epoch and the parameters); also epochs_run, seed, "
                   "test_metric, datetime_start, datetime_complete.")
@all_params_option
@format_option
def trials(study: str, storage: str, states: tuple[str, ...], where: str | None,
           sort: str | None, best_first: bool, limit: int | None, columns: str | None,
           all_params: bool, fmt: str) -> None:
    """One row per trial: state, value, duration (s), best epoch and the parameters.

    A table fits the terminal's width (COLUMNS, or 120 characters when the output is not
    a terminal): it shows the parameters that differ between the trials shown, names
    those that are the same in all below it, and goes on in further blocks when it is
    still too wide. One trial is shown as a list. CSV and JSON carry every column.

    \b
    Example:
      tuner trials --study reg --where "optimizer == 'adam' and dropout > 0.3" \\
                   --sort -value --limit 10
    """
    from tuner import queries
    from tuner.cli._display import flat, output_width, trial_text, trials_table

    shown = _names(columns)
    db = open_readonly(storage)
    rows = queries.trials(db, study, states=states, where=where, sort=_names(sort),
                          best_first=best_first, limit=limit, columns=shown)
    params = queries.param_names(rows)
    if fmt != "table" or shown:
        width = output_width() if fmt == "table" else None
        click.echo(format_rows(flat(rows), shown or TRIAL_COLUMNS + params, fmt, width=width),
                   nl=False)
    elif len(rows) == 1:
        click.echo(trial_text(rows[0], queries.study_metric(db, study)), nl=False)
    else:
        click.echo(trials_table(rows, TRIAL_COLUMNS, params, output_width(), all_params),
                   nl=False)


@cli.command()
@study_option
@storage_option
@click.option("--top", type=db_int(min=1), default=1, show_default=True,
              help="Show the K best trials.")
@all_params_option
@format_option
def best(study: str, storage: str, top: int, all_params: bool, fmt: str) -> None:
    """The best trial(s): validation value, test metric, best epoch, seed and parameters.

    One trial is shown as a list, as `tuner start` ends; several as a table that fits the
    terminal (see `tuner trials --help`). CSV and JSON carry every column.
    """
    from tuner import queries
    from tuner.cli._display import flat, output_width, trial_text, trials_table

    db = open_readonly(storage)
    rows = queries.best_trials(db, study, top)
    params = queries.param_names(rows)
    if fmt != "table":
        click.echo(format_rows(flat(rows), BEST_COLUMNS + params, fmt), nl=False)
    elif len(rows) == 1:
        click.echo(trial_text(rows[0], queries.study_metric(db, study), best=True), nl=False)
    else:
        click.echo(trials_table(rows, BEST_COLUMNS, params, output_width(), all_params),
                   nl=False)


@cli.command()
@study_option
@storage_option
@click.option("--trial", "numbers", type=db_int(min=0), multiple=True, metavar="N",
              help="The trial's number (repeat for several trials). Default: the study's "
                   "best trial.")
@format_option
def curves(study: str, storage: str, numbers: tuple[int, ...], fmt: str) -> None:
    """Per-epoch metrics of trials: train loss, val loss, val metric, learning rate, seconds.

    Without --trial, the study's best trial's (the output says which trial that is: on
    stderr for CSV and JSON, whose stdout stays data). Further values a training function
    of yours reported (`report(epoch, value, f1=...)`) follow as columns of their own.
    Trials the tuner did not train (a plain Optuna study) show their intermediate values
    as val_metric.
    """
    from tuner import queries
    from tuner.cli._display import output_width

    db = open_readonly(storage)
    note = None
    if not numbers:
        try:
            (best_row,) = queries.best_trials(db, study, 1)
        except UsageError:
            raise
        except TunerError as exc:  # no complete trial, or no single best one
            raise TunerError(f"{exc}; give --trial N to pick a trial") from None
        numbers = (best_row["number"],)
        metric = queries.study_metric(db, study)
        what = "value" if metric is None else f"validation {metric}"
        note = (f"No --trial given: the best trial, #{best_row['number']} ({what} "
                f"{best_row['value']:.6g}).")
    rows = queries.curves(db, study, list(dict.fromkeys(numbers)))
    if note is not None:
        click.echo(note, err=fmt != "table")
    width = output_width() if fmt == "table" else None
    click.echo(format_rows(rows, queries.curve_columns(rows), fmt, width=width, repeat=2),
               nl=False)
