"""``tuner copy``: a study, with the tuner's rows, into another database."""

from __future__ import annotations

import click

from tuner.catalogue import DEFAULT_STORAGE
from tuner.cli import cli
from tuner.cli._options import StudyName
from tuner.formatting import plural


@cli.command()
@click.option("--from", "source", envvar="TUNER_STORAGE", default=DEFAULT_STORAGE,
              show_default=True, show_envvar=True, metavar="URL",
              help="The database the study is in, as an SQLAlchemy URL (as --storage).")
@click.option("--to", "destination", required=True, metavar="URL",
              help="The database to copy it into, as an SQLAlchemy URL; created when it is "
                   "a SQLite file that does not exist.")
@click.option("--study", required=True, metavar="NAME", help="The study to copy.")
@click.option("--as", "new_name", metavar="NEW", type=StudyName(),
              help="The copy's name (default: the study's); it must not exist in --to.")
def copy(source: str, destination: str, study: str, new_name: str | None) -> None:
    """Copy a study into another database, with everything the tuner recorded.

    Optuna's own copy_study copies the trials; this also copies the tuner's rows of
    each trial (seed, best epoch, test metric, per-epoch losses and metrics, the best
    models' weights, checkpoints), so that `tuner best`, `curves`, `report` and `export`
    read the copy as they read the study, and `tuner start` or `tuner worker` resume it
    there. The study is left as it is. A study with running trials is refused: copy it
    once its workers have stopped.

    \b
    Example:
      tuner copy --from sqlite:///storage/tuner.db --to postgresql://me@dbhost/tuner \\
                 --study reg
      tuner copy --to sqlite:///backup.db --study reg --as reg-2026-01
    """
    from tuner.storage import TunerStorage, copy_study, display_url

    copied = copy_study(TunerStorage(source, create=False, heartbeat=False).open(),
                        TunerStorage(destination, heartbeat=False), study, new_name)
    rows = copied.rows
    click.echo(f"Copied study {study!r} from {display_url(source)} to "
               f"{display_url(destination)} as {copied.new_name!r}: "
               f"{plural(copied.trials, 'trial')}, "
               f"{plural(rows['tuner_epochs'], 'epoch row')}, "
               f"{plural(rows['tuner_models'], 'model')}, "
               f"{plural(rows['tuner_checkpoints'], 'checkpoint')}.")
    click.echo(f"Read it there: tuner best --study {copied.new_name} "
               f"--storage {display_url(destination)}")
