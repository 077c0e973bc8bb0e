"""``tuner delete`` and ``tuner upgrade``: the commands that change a database's studies
or schema rather than run trials."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import click

from tuner.cli import cli
from tuner.cli._options import storage_option
from tuner.errors import StudyNotFoundError, UsageError


@cli.command()
@storage_option
@click.option("--study", "name", required=True, metavar="NAME", help="The study to delete.")
@click.option("--yes", "-y", is_flag=True,
              help="Delete without asking (for scripts); without it the command asks, "
                   "and refuses when there is no terminal to ask on.")
def delete(storage: str, name: str, yes: bool) -> None:
    """Delete a study with all its trials and everything the tuner recorded about them
    (per-epoch rows, summaries, checkpoints, saved weights), in one transaction.

    \b
    Example:
      tuner delete --study reg          # asks first
      tuner delete --study reg --yes
    """
    from optuna.trial import TrialState

    from tuner.run.study import count_states, require_study
    from tuner.storage import TunerStorage, display_url

    db = TunerStorage(storage, create=False, heartbeat=False).open()
    study_id = require_study(db, name)
    counts = count_states(db, study_id)
    total = sum(counts.values())
    running = counts[TrialState.RUNNING]
    what = (f"study {name!r} ({total} trial{'' if total == 1 else 's'}"
            f"{f', {running} running' if running else ''}) from {display_url(db.url)}")
    if not yes:
        if not can_ask():
            raise UsageError("deleting a study needs a confirmation: run it in a terminal, "
                             "or pass --yes")
        click.confirm(f"Delete {what}?", abort=True, err=True)
    db.delete_study(study_id)
    try:
        require_study(db, name)
    except StudyNotFoundError:
        click.echo(f"Deleted {what}.")
        return
    raise click.ClickException(f"study {name!r} is still there after deleting it")


def can_ask() -> bool:
    """Whether there is a terminal to ask for a confirmation on."""
    return sys.stdin.isatty()


@cli.command()
@storage_option
def upgrade(storage: str) -> None:
    """Upgrade a study database to the installed Optuna's schema, keeping the tuner's
    tables and views.

    Optuna's own `optuna storage upgrade` stops at the tuner's views (SQLite rebuilds the
    tables they read; PostgreSQL cannot alter a column a view uses); this drops them,
    runs Optuna's migration, and recreates them. Back up the database first, as for any
    migration. A database that is already current is left as it is.
    """
    from tuner.storage import TunerStorage, display_url

    db = TunerStorage(storage, heartbeat=False)
    with _migration_steps_shown():
        before, after = db.upgrade()
    where = display_url(db.url)
    if before == after:
        click.echo(f"{where} already has the current Optuna schema ({after}); the tuner's "
                   "tables and views are up to date.")
    else:
        click.echo(f"Upgraded {where} from Optuna schema {before} to {after}; the tuner's "
                   "tables and views are up to date.")


@contextmanager
def _migration_steps_shown() -> Iterator[None]:
    """Show each of Optuna's migration steps as one line (alembic's "Running upgrade
    A -> B, what"), and nothing else of alembic's logging or of the warnings the old
    distributions raise while they are converted."""
    root, log = logging.getLogger(), logging.getLogger("alembic.runtime.migration")
    guard = logging.NullHandler()  # a root handler: Optuna's alembic set-up keeps logging
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("  %(message)s"))
    handler.addFilter(lambda record: record.getMessage().startswith("Running upgrade"))
    level = log.level
    root.addHandler(guard)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        root.removeHandler(guard)
