"""``tuner dashboard``: the live web UI over the study database."""

from __future__ import annotations

import click

from tuner.cli import cli
from tuner.cli._options import storage_option
from tuner.cli._query import open_readonly
from tuner.dashboard import dashboard_url, make_dashboard
from tuner.storage import display_url


@cli.command()
@storage_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on; 0.0.0.0 opens the dashboard to every "
                   "machine that can reach this one.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="The port to listen on (0: any free port).")
def dashboard(storage: str, host: str, port: int) -> None:
    """Serve optuna-dashboard's live web UI over the study database, until Ctrl-C.

    It reads the database while studies run (on SQLite and PostgreSQL alike) and creates
    nothing in it.

    \b
    Example:
      tuner dashboard --port 8080      # then open http://127.0.0.1:8080/
    """
    db = open_readonly(storage)
    server = make_dashboard(db, host, port)
    click.echo(f"Dashboard for {display_url(db.url)} at {dashboard_url(server)} "
               "(Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("Dashboard stopped.")
    finally:
        server.server_close()
        db.engine.dispose()
