"""Read-back commands: ``tuner studies``, ``tuner trials``, ``tuner best``."""

from __future__ import annotations

import click

from tuner import queries
from tuner.cli import cli
from tuner.cli._options import format_option, storage_option, study_option
from tuner.formatting import format_rows
from tuner.storage import TunerStorage

TRIAL_COLUMNS = ["number", "state", "value", "duration", "best_epoch"]
STATES = ("complete", "pruned", "running", "fail", "waiting")


def _open(storage: str) -> TunerStorage:
    # Reading never creates a database, and heartbeats are for workers.
    return TunerStorage(storage, create=False, heartbeat=False).open()


@cli.command()
@storage_option
@format_option
def studies(storage: str, fmt: str) -> None:
    """List the studies: direction, trials by state, best value, created, last activity."""
    rows = queries.studies(_open(storage))
    click.echo(format_rows(rows, queries.STUDY_COLUMNS, fmt), nl=False)


@cli.command()
@study_option
@storage_option
@click.option("--state", "states", multiple=True, type=click.Choice(STATES),
              help="Only trials in this state (repeat for several).")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many rows.")
@click.option("--best-first", is_flag=True, help="Sort by value, best first.")
@format_option
def trials(study: str, storage: str, states: tuple[str, ...], limit: int | None,
           best_first: bool, fmt: str) -> None:
    """One row per trial: state, value, duration (s), best epoch and every parameter."""
    rows = queries.trials(_open(storage), study, states=states, best_first=best_first,
                          limit=limit)
    names = queries.param_names(rows)
    flat = [{**r, **r["params"]} for r in rows]
    click.echo(format_rows(flat, TRIAL_COLUMNS + names, fmt), nl=False)


@cli.command()
@study_option
@storage_option
@click.option("--top", type=click.IntRange(min=1), default=1, show_default=True,
              help="Show the K best trials.")
@format_option
def best(study: str, storage: str, top: int, fmt: str) -> None:
    """The best trial(s): value, best epoch, seed, test metric and parameters."""
    rows = queries.trials(_open(storage), study, states=("complete",), best_first=True,
                          limit=top)
    if not rows:
        raise click.ClickException(f"study {study!r} has no complete trial yet")
    names = queries.param_names(rows)
    flat = [{**r, **r["params"]} for r in rows]
    columns = ["number", "value", "test_metric", "best_epoch", "seed", *names]
    click.echo(format_rows(flat, columns, fmt), nl=False)
