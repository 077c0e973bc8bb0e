"""``tuner dashboard``: optuna-dashboard's web UI over the study database.

optuna-dashboard does the UI; this module serves its WSGI app with the standard
library's threaded server (a browser fetches several resources at once), on a port it
binds before printing the URL, so a port in use is one clear error and nothing else.
The storage is opened read-only (nothing is created), and the dashboard's reads are
short transactions: on SQLite in WAL mode (every tuner database) they never block a
running study's writes.
"""

from __future__ import annotations

import errno
import socket
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tuner.errors import TunerError, UsageError
from tuner.storage import TunerStorage


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # Ctrl-C does not wait for a browser's open connections


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """One line per request would bury the URL; errors still reach the browser."""


def make_dashboard(storage: TunerStorage, host: str = "127.0.0.1", port: int = 8080
                   ) -> WSGIServer:
    """Bind ``host:port`` and return the server (not yet serving); port 0 picks a free one.

    >>> server = make_dashboard(TunerStorage("sqlite:///:memory:").open(), port=0)
    >>> dashboard_url(server).startswith("http://127.0.0.1:")
    True
    >>> server.server_close()
    """
    from optuna_dashboard import wsgi

    app = wsgi(storage.optuna)
    try:
        return make_server(host, port, app, server_class=_ThreadedServer,
                           handler_class=_QuietHandler)
    except socket.gaierror:
        raise UsageError(f"--host: cannot resolve {host!r}") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise TunerError(f"port {port} on {host} is already in use; choose another "
                             "with --port") from None
        if exc.errno == errno.EACCES:
            raise TunerError(f"no permission to listen on port {port} (ports below 1024 "
                             "need privileges); choose another with --port") from None
        raise TunerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def dashboard_url(server: WSGIServer) -> str:
    host, port = server.server_address[:2]
    name = host.decode() if isinstance(host, bytes) else host
    return f"http://{name}:{port}/"
