"""``tuner dashboard``: optuna-dashboard's web UI over the study database.

optuna-dashboard does the UI; this module serves its WSGI app with the standard
library's threaded server (a browser fetches several resources at once), on a port it
binds before printing the URL, so a port in use is one clear error and nothing else.
The dashboard's reads are short transactions: on SQLite in WAL mode (every tuner
database) they never block a running study's writes.

optuna-dashboard has no authentication, and its API writes: it creates, renames and
deletes studies, saves notes, tells trials, sets user attributes, records preferences
and uploads artifacts, for anyone who can reach the port. So:

* :class:`WriteGuard` stands in front of it and lets only GET, HEAD and OPTIONS through
  by default. It decides by method, not by a list of optuna-dashboard's write routes,
  so a write route a later version adds is refused too. With ``allow_writes`` the
  writes pass, except a rename, which it performs itself
  (:func:`tuner.storage._rename.rename_study`): optuna-dashboard's copies the study
  into a new one, new trial ids and all, and the tuner's rows would be left behind.
* Binding an address other machines can reach needs ``allow_remote``
  (:func:`check_host`); :func:`remote_warning` is what to say when it is given.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import re
import socket
from collections.abc import Callable, Iterable
from http import HTTPStatus
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tuner.errors import StudyNotFoundError, TunerError, UsageError
from tuner.storage import TunerStorage, rename_study

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

# The methods that only read: everything else is a write until shown otherwise.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# optuna-dashboard's rename route, matched as bottle matches `<study_id:int>` on the path
# its hook strips of trailing slashes.
_RENAME = re.compile(r"/api/studies/(-?\d+)/rename")
# optuna-dashboard's button that runs Optuna's schema migration, which the tuner's views
# stop; `tuner upgrade` is the one that works.
_SCHEMA_UPGRADE = "/incompatible-rdb-schema"
# Request bodies read, at most: a rename's JSON (bottle's own limit), and what is read
# of a refused request's body so that closing the connection does not reset it before
# the client has read the refusal.
_JSON_MAX = 102_400
_DRAIN_MAX = 1 << 20


def read_only_reason(method: str, path: str) -> str:
    return (f"The dashboard is read-only: {method} {path} would change the study database. "
            "Restart it with `tuner dashboard --allow-writes` to allow changes.")


class WriteGuard:
    """WSGI middleware: optuna-dashboard's app, read-only unless ``allow_writes``.

    A refused request gets HTTP 403 and ``{"reason": ...}``, the JSON optuna-dashboard's
    UI shows for a failed request. With ``allow_writes``, ``storage`` must have been
    opened for writing (``TunerStorage(url).open()``): that creates the ties that delete
    the tuner's rows with a study (:mod:`tuner.storage._schema`).

    >>> def app(environ, start_response):
    ...     start_response("200 OK", [])
    ...     return [b"ok"]
    >>> guard = WriteGuard(app, TunerStorage("sqlite:///:memory:").open())
    >>> print(b"".join(guard({"REQUEST_METHOD": "DELETE", "PATH_INFO": "/api/studies/1"},
    ...                      lambda status, headers: print(status))).decode()[:38])
    403 Forbidden
    {"reason": "The dashboard is read-only
    """

    def __init__(self, app: WSGIApp, storage: TunerStorage, allow_writes: bool = False
                 ) -> None:
        self.app = app
        self.storage = storage
        self.allow_writes = allow_writes

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        if method in READ_METHODS:
            return self.app(environ, start_response)
        path = _route_path(environ)
        if not self.allow_writes:
            _drain(environ)
            return _respond(start_response, 403, {"reason": read_only_reason(method, path)})
        if path == _SCHEMA_UPGRADE:
            _drain(environ)
            return _respond(start_response, 403, {
                "reason": "Upgrade the study database's schema with `tuner upgrade`: Optuna's "
                          "own migration, which this page runs, stops at the tuner's views."})
        match = _RENAME.fullmatch(path)
        if method == "POST" and match:
            return self._rename(int(match.group(1)), environ, start_response)
        return self.app(environ, start_response)

    def _rename(self, study_id: int, environ: Environ, start_response: StartResponse
                ) -> Iterable[bytes]:
        """optuna-dashboard's rename, in place: the same request, the same answers
        (201 with the study's summary; 400 for a missing or taken name; 404)."""
        from optuna_dashboard._serializer import serialize_frozen_study
        from optuna_dashboard._storage import get_study

        body = _json_body(environ)
        name = body.get("study_name") if isinstance(body, dict) else None
        if not isinstance(name, str):
            return _respond(start_response, 400, {
                "reason": 'Expected a JSON body {"study_name": NEW_NAME}.'})
        try:
            rename_study(self.storage, study_id, name)
        except StudyNotFoundError:
            return _respond(start_response, 404, {"reason": f"study_id={study_id} is not found"})
        except UsageError as exc:
            return _respond(start_response, 400, {"reason": str(exc)})
        except TunerError as exc:
            return _respond(start_response, 500, {"reason": str(exc)})
        study = get_study(self.storage.optuna, study_id)
        if study is None:  # deleted by someone else since
            return _respond(start_response, 404, {"reason": f"study_id={study_id} is not found"})
        return _respond(start_response, 201, serialize_frozen_study(study))


def _route_path(environ: Environ) -> str:
    """The path as optuna-dashboard's routes see it: bottle decodes WSGI's latin-1 path
    as UTF-8, and optuna-dashboard's hook strips trailing slashes."""
    raw = str(environ.get("PATH_INFO", ""))
    return raw.encode("latin1", "ignore").decode("utf8", "ignore").rstrip("/")


def _content_length(environ: Environ) -> int:
    try:
        return max(0, int(environ.get("CONTENT_LENGTH") or 0))
    except ValueError:
        return 0


def _drain(environ: Environ) -> None:
    length, stream = min(_content_length(environ), _DRAIN_MAX), environ.get("wsgi.input")
    while length > 0 and stream is not None:
        chunk = stream.read(min(length, 65536))
        if not chunk:
            break
        length -= len(chunk)


def _json_body(environ: Environ) -> Any:
    """The request's JSON, or None; as bottle reads it, only with a JSON content type
    (which a cross-site form cannot send without the browser asking first)."""
    ctype = str(environ.get("CONTENT_TYPE", "")).lower().split(";")[0].strip()
    length = _content_length(environ)
    if ctype not in ("application/json", "application/json-rpc") or not 0 < length <= _JSON_MAX:
        _drain(environ)
        return None
    try:
        return json.loads(environ["wsgi.input"].read(length))
    except ValueError:
        return None


def _respond(start_response: StartResponse, status: int, body: dict[str, Any]
             ) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(f"{status} {HTTPStatus(status).phrase}",
                   [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only: 127.0.0.0/8, ::1, localhost.

    >>> [is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "localhost", "0.0.0.0")]
    [True, True, True, True, False]
    """
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False  # any other name may resolve to anything
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _exposure(port: int, allow_writes: bool) -> str:
    port = port or 8080
    writes = " and, with --allow-writes, change them" if allow_writes else ""
    return (f"the dashboard has no authentication: anyone who can reach port {port} can "
            f"read every study{writes}. To expose it safely, keep it on 127.0.0.1 and use "
            f"an SSH tunnel from the other machine (ssh -L {port}:127.0.0.1:{port} HOST, then "
            f"open http://127.0.0.1:{port}/), or a reverse proxy with authentication")


def check_host(host: str, port: int, allow_remote: bool, allow_writes: bool = False) -> None:
    """Refuse to listen where other machines can reach the dashboard, unless allowed.

    >>> check_host("0.0.0.0", 8080, allow_remote=False)
    Traceback (most recent call last):
    ...
    tuner.errors.UsageError: --host 0.0.0.0 is not a loopback address, and the dashboard ...
    """
    if allow_remote or is_loopback(host):
        return
    raise UsageError(f"--host {host} is not a loopback address, and "
                     f"{_exposure(port, allow_writes)}; pass --allow-remote to listen on {host} "
                     "anyway")


def remote_warning(host: str, port: int, allow_writes: bool) -> str | None:
    """The warning for a dashboard other machines can reach; None on a loopback address."""
    if is_loopback(host):
        return None
    exposure = _exposure(port, allow_writes)
    return f"Warning: listening on {host} (--allow-remote), and {exposure}."


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # Ctrl-C does not wait for a browser's open connections


class _ThreadedServer6(_ThreadedServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """One line per request would bury the URL; errors still reach the browser."""


def make_dashboard(storage: TunerStorage, host: str = "127.0.0.1", port: int = 8080, *,
                   allow_writes: bool = False, allow_remote: bool = False) -> WSGIServer:
    """Bind ``host:port`` and return the server (not yet serving); port 0 picks a free one.

    The dashboard is read-only unless ``allow_writes`` (then ``storage`` must be opened
    for writing), and listens on a non-loopback ``host`` only with ``allow_remote``.

    >>> server = make_dashboard(TunerStorage("sqlite:///:memory:").open(), port=0)
    >>> dashboard_url(server).startswith("http://127.0.0.1:")
    True
    >>> server.server_close()
    """
    check_host(host, port, allow_remote, allow_writes)
    if allow_writes and not storage.create:
        raise UsageError("a dashboard that writes needs its storage opened for writing "
                         "(TunerStorage(url).open()), whose ties delete the tuner's rows "
                         "with their study")
    from optuna_dashboard import wsgi

    app = WriteGuard(wsgi(storage.optuna), storage, allow_writes)
    server_class = _ThreadedServer6 if ":" in host else _ThreadedServer
    try:
        return make_server(host.strip("[]"), port, app, server_class=server_class,
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
    return f"http://[{name}]:{port}/" if ":" in name else f"http://{name}:{port}/"
