"""``tuner dashboard``: the live web UI over the study database."""

from __future__ import annotations

import click

from tuner.cli import cli
from tuner.cli._options import storage_option
from tuner.cli._query import open_readonly


@cli.command()
@storage_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on. The default serves this machine only; an "
                   "address other machines can reach (anything but 127.0.0.0/8, ::1 and "
                   "localhost, e.g. 0.0.0.0 for every interface) needs --allow-remote.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="The port to listen on (0: any free port).")
@click.option("--allow-writes", is_flag=True,
              help="Let the dashboard change the study database: create, rename and delete "
                   "studies, save notes, tell trials, set user attributes, record "
                   "preferences, upload artifacts. Without it each of those requests is "
                   "refused with HTTP 403.")
@click.option("--allow-remote", is_flag=True,
              help="Listen on a --host that other machines can reach. The dashboard has no "
                   "authentication, so anyone who reaches the port can use it; prefer an "
                   "SSH tunnel or a reverse proxy with authentication (see above).")
def dashboard(storage: str, host: str, port: int, allow_writes: bool,
              allow_remote: bool) -> None:
    """Serve optuna-dashboard's live web UI over the study database, until Ctrl-C.

    It reads the database while studies run, on SQLite and PostgreSQL alike. It is
    read-only by default: every request that would change the database (creating,
    renaming or deleting a study, notes, telling a trial, user attributes, preferential
    feedback, artifact uploads) is refused with HTTP 403, and nothing is created in it.

    With --allow-writes those requests go through. A rename then changes only the study's
    name: the study and its trials keep their ids, so `tuner best` and `tuner curves`
    still find the tuner's rows (seed, best epoch, test metric, per-epoch losses). A
    deletion removes the tuner's rows with the study.

    The dashboard has no authentication: anyone who can reach its port can use it. It
    listens on 127.0.0.1, which only this machine reaches; another --host needs
    --allow-remote. To use it from another machine, keep it on 127.0.0.1 and open an SSH
    tunnel from that machine (ssh -L 8080:127.0.0.1:8080 HOST, then browse
    http://127.0.0.1:8080/), or put it behind a reverse proxy that authenticates.

    \b
    Example:
      tuner dashboard --port 8080      # then open http://127.0.0.1:8080/
      tuner dashboard --allow-writes   # notes, renames and deletions from the UI
    """
    from tuner.dashboard.server import check_host, dashboard_url, make_dashboard, remote_warning
    from tuner.storage import TunerStorage, close_connections, display_url

    check_host(host, port, allow_remote, allow_writes)  # before the database is opened
    db = open_readonly(storage)
    if allow_writes:
        # Opened for writing, the database gets the ties that delete the tuner's rows
        # with their study (one from an older tuner may lack them); open_readonly first,
        # so that a mistyped --storage is an error, not a new empty database.
        close_connections(db)
        db = TunerStorage(storage, heartbeat=False).open()
    server = make_dashboard(db, host, port, allow_writes=allow_writes,
                            allow_remote=allow_remote)
    warning = remote_warning(host, server.server_address[1], allow_writes)
    if warning:
        click.echo(warning, err=True)
    mode = "writes allowed" if allow_writes else "read-only"
    click.echo(f"Dashboard ({mode}) for {display_url(db.url)} at {dashboard_url(server)} "
               "(Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("Dashboard stopped.")
    finally:
        server.server_close()
        close_connections(db)
