"""`tuner dashboard` is read-only by default, writes only with --allow-writes (a rename that
keeps every id, a deletion that takes the tuner's rows with it), and listens where other
machines can reach it only with --allow-remote (tuner/dashboard/server.py,
tuner/storage/_rename.py).

The server runs as `tuner dashboard` does, in a subprocess, against a database of two
studies run with `tuner start`, and is called over HTTP.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from click.testing import CliRunner

from tuner.cli import cli
from tuner.dashboard.server import READ_METHODS, WriteGuard, is_loopback
from tuner.storage import TunerStorage

Snapshot = Callable[[Path], dict[str, list[tuple[Any, ...]]]]
TUNER_BY_TRIAL = ("tuner_epochs", "tuner_epoch_metrics", "tuner_trials", "tuner_models")
TUNER_BY_STUDY = ("tuner_trials", "tuner_checkpoints")
ARTIFACT = str(uuid.uuid4())
DATA_URI = "data:text/plain;base64,aGVsbG8="

# Every route of optuna-dashboard's app that is not a GET (by its bottle rule), with a
# body it would accept: a guard that lets any through fails here.
WRITES: list[tuple[str, str, Any]] = [
    ("POST", "/api/studies", {"study_name": "created", "directions": ["maximize"]}),
    ("POST", "/api/studies/<study_id:int>/rename", {"study_name": "renamed"}),
    ("DELETE", "/api/studies/<study_id:int>", {"remove_associated_artifacts": False}),
    ("PUT", "/api/studies/<study_id:int>/note", {"version": 1, "body": "study note"}),
    ("PUT", "/api/studies/<study_id:int>/<trial_id:int>/note", {"version": 1, "body": "note"}),
    ("POST", "/api/studies/<study_id:int>/preference",
     {"mode": "ChooseWorst", "candidates": [0, 1], "clicked": 0}),
    ("PUT", "/api/studies/<study_id:int>/preference_feedback_component",
     {"output_type": "note"}),
    ("DELETE", "/api/studies/<study_id:int>/preference/<history_id>", None),
    ("POST", "/api/studies/<study_id:int>/preference/<history_id>", None),
    ("POST", "/api/studies/<study_id:int>/<trial_id:int>/skip", None),
    ("POST", "/api/trials/<trial_id:int>/tell", {"state": "Fail"}),
    ("POST", "/api/trials/<trial_id:int>/user-attrs", {"user_attrs": {"owner": "intruder"}}),
    ("POST", "/api/artifacts/<study_id:int>/<trial_id:int>",
     {"file": DATA_URI, "filename": "a.txt"}),
    ("POST", "/api/artifacts/<study_id:int>", {"file": DATA_URI, "filename": "a.txt"}),
    ("DELETE", "/api/artifacts/<study_id:int>/<trial_id:int>/<artifact_id:re:[0-9a-fA-F-]+>",
     None),
    ("DELETE", "/api/artifacts/<study_id:int>/<artifact_id:re:[0-9a-fA-F-]+>", None),
    ("POST", "/api/llm/trial_filter_query", {"user_query": "best trials"}),
    ("POST", "/api/llm/generate_plotly_graph_query", {"user_query": "a plot"}),
    ("POST", "/api/llm/re_generate_plotly_graph_query", {"user_query": "a plot"}),
    ("POST", "/incompatible-rdb-schema", None),  # runs Optuna's schema migration
]
# Requests no route of today's optuna-dashboard answers: refused all the same.
UNROUTED: list[tuple[str, str, Any]] = [
    ("PATCH", "/api/studies/<study_id:int>", {"study_name": "patched"}),
    ("POST", "/api/studies/<study_id:int>/rename/", {"study_name": "renamed"}),
    ("PROPFIND", "/api/studies", None),
    ("post", "/api/studies", {"study_name": "lowercase", "directions": ["minimize"]}),
]
READS = ["api/meta", "api/studies", "api/studies/{s}?after=0", "api/studies/{s}/param_importances",
         "csv/{s}", "dashboard", "dashboard/studies/{s}"]


def _path(rule: str, ids: dict[str, int]) -> str:
    """A bottle rule with the study's and a trial's ids in it."""
    path = rule.replace("<study_id:int>", str(ids["study"]))
    path = path.replace("<trial_id:int>", str(ids["trial"])).replace("<history_id>", ARTIFACT)
    return re.sub(r"<artifact_id:[^>]*>", ARTIFACT, path)


# --- the database: two studies run with `tuner start`, copied for each test -------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory,
          tiny_space_template: dict[str, Any]) -> Path:
    root = tmp_path_factory.mktemp("dash-writes")
    space = root / "tiny.yaml"
    space.write_text(yaml.safe_dump(dict(tiny_space_template), sort_keys=False))
    path = root / "tuner.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for name in ("alpha", "beta"):
            result = CliRunner().invoke(cli, ["start", "--space", str(space), "--storage",
                                              f"sqlite:///{path}", "--study", name,
                                              "--trials", "2", "--device", "cpu", "--quiet"])
            assert result.exit_code == 0, result.output
    return path


def _copy_db(source: Path, target: Path) -> Path:
    """A SQLite file with its write-ahead log, which may hold the latest commits."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal"):
        if Path(f"{source}{suffix}").exists():
            shutil.copy(f"{source}{suffix}", f"{target}{suffix}")
    return target


@pytest.fixture
def db(built: Path, db_path: Path) -> Path:
    return _copy_db(built, db_path)


def _ids(path: Path, name: str) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        study = conn.execute("SELECT study_id FROM studies WHERE study_name = ?",
                             (name,)).fetchone()[0]
        trials = [r[0] for r in conn.execute(
            "SELECT trial_id FROM trials WHERE study_id = ? ORDER BY number", (study,))]
    finally:
        conn.close()
    return {"study": study, "trial": trials[0], "trials": trials}


def _file_digest(path: Path) -> dict[str, str]:
    """The bytes of the database and of its write-ahead log, if it holds any (a reader
    creates an empty one; the -shm index is the readers' shared memory, not data)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.parent.glob(path.name + "*"))
            if not p.name.endswith("-shm") and p.stat().st_size}


# --- the server, as `tuner dashboard` runs it ---------------------------------------------


@contextmanager
def _serve(path: Path, *flags: str) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "dashboard", "--storage",
                             f"sqlite:///{path}", "--port", "0", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r" at (http://[^ ]+/) \(Ctrl-C to stop\)", line)
        assert match, line + proc.stderr.read() if proc.stderr else line
        yield match.group(1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err


def _call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def _best(path: Path, name: str) -> list[dict[str, Any]]:
    return _best_at(f"sqlite:///{path}", name)


def _rows_of(snapshot: dict[str, list[tuple[Any, ...]]], ids: dict[str, Any]
             ) -> dict[str, list[tuple[Any, ...]]]:
    """The tuner's rows of one study (their first column is the trial's or study's id)."""
    rows = {t: [r for r in snapshot[t] if r[0] in ids["trials"]] for t in TUNER_BY_TRIAL}
    rows["tuner_checkpoints"] = [r for r in snapshot["tuner_checkpoints"]
                                 if r[0] == ids["study"]]
    return rows


# --- read-only by default -------------------------------------------------------------------


def test_every_write_route_of_optuna_dashboard_is_in_the_list(db: Path) -> None:
    """So that the HTTP test below calls each: a route a new optuna-dashboard adds shows
    up here (and is refused anyway, by its method)."""
    from optuna_dashboard import wsgi

    storage = TunerStorage(f"sqlite:///{db}", create=False, heartbeat=False).open()
    routes = {(r.method, r.rule) for r in wsgi(storage.optuna).routes if r.method != "GET"}
    storage.engine.dispose()
    assert routes == {(method, rule) for method, rule, _ in WRITES}


@pytest.mark.slow
def test_read_only_refuses_every_write_and_changes_nothing(db: Path,
                                                           db_snapshot: Snapshot) -> None:
    ids = _ids(db, "alpha")
    before, digest = db_snapshot(db), _file_digest(db)
    assert before["tuner_epochs"] and before["tuner_trials"]  # something to lose
    with _serve(db) as url:
        for method, rule, body in WRITES + UNROUTED:
            status, answer = _call(method, url + _path(rule, ids).lstrip("/"), body)
            assert status == 403, (method, rule, status, answer)
            assert isinstance(answer, dict), (method, rule, answer)
            assert "read-only" in answer["reason"] and "--allow-writes" in answer["reason"]
        for read in READS:  # reads still work, in the same server
            status, answer = _call("GET", url + read.format(s=ids["study"]))
            assert status == 200, (read, answer)
        status, answer = _call("GET", url + "api/studies")
        assert sorted(s["study_name"] for s in answer["study_summaries"]) == ["alpha", "beta"]
        assert _call("HEAD", url + "api/studies")[0] == 200
        assert _file_digest(db) == digest
    assert db_snapshot(db) == before
    assert _file_digest(db) == digest  # byte for byte


def test_the_guard_refuses_by_method_whatever_the_route() -> None:
    """In-process: a write method on any path, routed or not, never reaches the app."""
    reached: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        reached.append(environ["REQUEST_METHOD"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"app"]

    guard = WriteGuard(app, TunerStorage("sqlite:///:memory:").open())
    statuses: list[str] = []
    for method in ("POST", "PUT", "PATCH", "DELETE", "PROPFIND", "MKCOL", "put", "TRACE",
                   *READ_METHODS):
        body = b"x" * 300_000  # more than a refusal reads: the guard must not hang on it
        environ = {"REQUEST_METHOD": method, "PATH_INFO": "/any/path/", "wsgi.input":
                   BytesIO(body), "CONTENT_LENGTH": str(len(body))}
        answer = b"".join(guard(environ, lambda status, headers: statuses.append(status)))
        if method in READ_METHODS:
            assert answer == b"app"
        else:
            assert statuses[-1] == "403 Forbidden" and b"--allow-writes" in answer, method
    assert reached == list(READ_METHODS)


# --- --allow-writes -------------------------------------------------------------------------


@pytest.mark.slow
def test_rename_keeps_the_ids_and_the_tuner_rows(db: Path, db_snapshot: Snapshot) -> None:
    ids = _ids(db, "alpha")
    best = _best(db, "alpha")
    assert best[0]["test_metric"] is not None and best[0]["seed"] is not None
    before = db_snapshot(db)
    with _serve(db, "--allow-writes") as url:
        status, answer = _call("POST", f"{url}api/studies/{ids['study']}/rename",
                               {"study_name": "gamma"})
        assert status == 201, answer
        summaries = _call("GET", url + "api/studies")[1]["study_summaries"]
        # What the UI puts in place of the old summary is the one it lists.
        assert answer == next(s for s in summaries if s["study_name"] == "gamma")
        assert answer["study_id"] == ids["study"]
        status, taken = _call("POST", f"{url}api/studies/{ids['study']}/rename",
                              {"study_name": "beta"})
        assert status == 400 and "already exists" in taken["reason"]
        assert _call("POST", f"{url}api/studies/9999/rename", {"study_name": "x"})[0] == 404
        assert _call("POST", f"{url}api/studies/{ids['study']}/rename", {"name": "x"})[0] == 400
    after = db_snapshot(db)
    assert _ids(db, "gamma") == ids  # the study's id and its trials' ids
    # Only the name changed: every other row of every table is as it was.
    assert {t: rows for t, rows in after.items() if t != "studies"} == \
           {t: rows for t, rows in before.items() if t != "studies"}
    assert _best(db, "gamma") == best  # seed, best epoch and test metric
    curves = CliRunner().invoke(cli, ["curves", "--study", "gamma", "--storage",
                                      f"sqlite:///{db}", "--format", "json"])
    assert curves.exit_code == 0, curves.output
    assert json.loads(curves.stdout)[0]["train_loss"] is not None
    gone = CliRunner().invoke(cli, ["best", "--study", "alpha", "--storage", f"sqlite:///{db}"])
    assert gone.exit_code == 2 and "no study 'alpha'" in gone.stderr


def test_rename_answers_as_optuna_dashboards_does(db: Path, tmp_path: Path) -> None:
    """The reference: optuna-dashboard's own rename (on a copy), called in-process. The
    same status and fields, the same values but the id (its copy gets a new one)."""
    from optuna_dashboard import wsgi

    copy = _copy_db(db, tmp_path / "copy" / "tuner.db")
    answers, statuses = [], []
    for path, guarded in ((copy, False), (db, True)):
        storage = TunerStorage(f"sqlite:///{path}", heartbeat=False).open()
        app = wsgi(storage.optuna)
        app = WriteGuard(app, storage, allow_writes=True) if guarded else app
        body = json.dumps({"study_name": "gamma"}).encode()
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/api/studies/1/rename",
                   "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
                   "wsgi.input": BytesIO(body), "SERVER_NAME": "x", "SERVER_PORT": "0",
                   "wsgi.url_scheme": "http", "QUERY_STRING": "", "wsgi.errors": sys.stderr}
        raw = b"".join(app(environ, lambda status, headers, *_: statuses.append(status)))
        answers.append((statuses[-1], json.loads(raw)))
        storage.engine.dispose()
    (theirs_status, theirs), (ours_status, ours) = answers
    assert ours_status == theirs_status == "201 Created"
    assert ours.keys() == theirs.keys()
    def same(answer: dict[str, Any]) -> dict[str, Any]:  # its copy re-adds the attributes
        return {**answer, "study_id": None, "user_attrs": sorted(
            answer["user_attrs"], key=lambda a: a["key"])}

    assert same(ours) == same(theirs)
    assert theirs["study_id"] != 1 and ours["study_id"] == 1


def _drop_ties(path: Path) -> None:
    """The database as a tuner from before the ties left it (schema version 1)."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DROP TRIGGER tuner_trial_deleted")
        conn.execute("DROP TRIGGER tuner_study_deleted")
        conn.execute("DROP TABLE tuner_schema")
    conn.close()


@pytest.mark.parametrize("schema", ["current", "before the ties"])
@pytest.mark.slow
def test_delete_takes_the_tuner_rows_of_that_study_only(db: Path, db_snapshot: Snapshot,
                                                        schema: str) -> None:
    if schema == "before the ties":
        _drop_ties(db)  # --allow-writes opens the database for writing: that adds them
    alpha, beta = _ids(db, "alpha"), _ids(db, "beta")
    before = db_snapshot(db)
    assert all(_rows_of(before, alpha)[t] for t in ("tuner_epochs", "tuner_trials"))
    with _serve(db, "--allow-writes") as url:
        status, _ = _call("DELETE", f"{url}api/studies/{alpha['study']}", {})
        assert status == 204
        names = [s["study_name"] for s in _call("GET", url + "api/studies")[1]
                 ["study_summaries"]]
        assert names == ["beta"]
    after = db_snapshot(db)
    assert not any(_rows_of(after, alpha).values())
    assert _rows_of(after, beta) == _rows_of(before, beta)
    for table in (*TUNER_BY_TRIAL, "tuner_checkpoints"):  # nothing else is left either
        assert after[table] == _rows_of(before, beta)[table], table
    assert _best(db, "beta")[0]["test_metric"] is not None


@pytest.mark.slow
def test_writes_pass_through_and_reads_still_work(db: Path) -> None:
    ids = _ids(db, "beta")
    with _serve(db, "--allow-writes") as url:
        status, _ = _call("PUT", f"{url}api/studies/{ids['study']}/note",
                          {"version": 1, "body": "checked by hand"})
        assert status == 204
        status, created = _call("POST", url + "api/studies",
                                {"study_name": "from-the-ui", "directions": ["minimize"]})
        assert status == 201, created
        status, _ = _call("POST", url + "incompatible-rdb-schema")
        assert status == 403  # Optuna's migration: `tuner upgrade` is the one that works
        for read in READS:
            assert _call("GET", url + read.format(s=ids["study"]))[0] == 200, read
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}", skip_table_creation=True)
    notes = storage.get_study_system_attrs(ids["study"]).values()
    assert any("checked by hand" in str(v) for v in notes)
    assert "from-the-ui" in [s.study_name for s in storage.get_all_studies()]
    storage.engine.dispose()


# --- who can reach it ----------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "dashboard.example.com"])
@pytest.mark.slow
def test_a_reachable_host_needs_allow_remote(host: str, tmp_path: Path) -> None:
    missing = tmp_path / "nothing" / "tuner.db"  # refused before the database is opened
    proc = subprocess.run([sys.executable, "-m", "tuner", "dashboard", "--host", host,
                           "--port", "0", "--storage", f"sqlite:///{missing}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""  # no URL: nothing was bound
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for fragment in (f"--host {host} is not a loopback address", "no authentication",
                     "--allow-remote", "ssh -L 8080:127.0.0.1:8080", "reverse proxy"):
        assert fragment in lines[0], lines[0]
    assert not missing.parent.exists()


@pytest.mark.slow
def test_allow_remote_listens_and_warns(db: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "dashboard", "--storage",
                             f"sqlite:///{db}", "--host", "0.0.0.0", "--port", "0",
                             "--allow-remote"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        warning = proc.stderr.readline()
        port = re.search(r"at http://0\.0\.0\.0:(\d+)/", line)
        assert port, line + warning
        assert warning.startswith("Warning: listening on 0.0.0.0 (--allow-remote)")
        for fragment in ("no authentication", f"ssh -L {port.group(1)}:127.0.0.1:",
                         "reverse proxy with authentication"):
            assert fragment in warning, warning
        status, _ = _call("GET", f"http://127.0.0.1:{port.group(1)}/api/studies")
        assert status == 200
        status, _ = _call("DELETE", f"http://127.0.0.1:{port.group(1)}/api/studies/1")
        assert status == 403  # reachable, and still read-only
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("localhost", True), ("LOCALHOST.", True),
    ("::1", True), ("[::1]", True), ("::ffff:127.0.0.1", True), ("0.0.0.0", False),
    ("::", False), ("", False), ("10.0.0.1", False), ("::ffff:10.0.0.1", False),
    ("myhost", False), ("127.0.0.1.example.com", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_loopback_hosts_need_nothing_more(runner: CliRunner, db: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """127.0.0.2 binds without --allow-remote and without a warning."""
    monkeypatch.setattr("wsgiref.simple_server.WSGIServer.serve_forever",
                        lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    result = runner.invoke(cli, ["dashboard", "--storage", f"sqlite:///{db}", "--host",
                                 "127.0.0.2", "--port", "0"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert re.match(r"Dashboard \(read-only\) for .* at http://127\.0\.0\.2:\d+/",
                    result.stdout)


@pytest.mark.postgres
@pytest.mark.slow
def test_rename_and_delete_on_postgresql(pg_url: str, tiny_path: Path) -> None:
    """The same rename and deletion on PostgreSQL, whose ties are foreign keys."""
    import threading

    from sqlalchemy import text

    from tuner.dashboard.server import dashboard_url, make_dashboard

    name, renamed = f"dash-{uuid.uuid4().hex[:8]}", f"dash-{uuid.uuid4().hex[:8]}"
    result = CliRunner().invoke(cli, ["start", "--space", str(tiny_path), "--storage", pg_url,
                                      "--study", name, "--trials", "2", "--device", "cpu",
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    storage = TunerStorage(pg_url, heartbeat=False).open()
    server = make_dashboard(storage, port=0, allow_writes=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = dashboard_url(server)

    def tuner_rows(study_id: int, trials: list[int]) -> int:
        """The tuner's rows of the study, by its id and its trials' (none may outlive them)."""
        with storage.session() as conn:
            return sum(int(conn.execute(text(sql), {"s": study_id, "t": trials}).scalar_one())
                       for sql in ("SELECT count(*) FROM tuner_trials WHERE study_id = :s",
                                   "SELECT count(*) FROM tuner_epochs WHERE trial_id = ANY(:t)",
                                   "SELECT count(*) FROM tuner_models WHERE trial_id = ANY(:t)"))

    try:
        study_id = storage.optuna.get_study_id_from_name(name)
        trials = [t._trial_id for t in storage.optuna.get_all_trials(study_id)]
        best, rows = _best_at(pg_url, name), tuner_rows(study_id, trials)
        assert rows > 0 and best[0]["test_metric"] is not None
        status, answer = _call("POST", f"{url}api/studies/{study_id}/rename",
                               {"study_name": renamed})
        assert status == 201 and answer["study_id"] == study_id, answer
        assert [t._trial_id for t in storage.optuna.get_all_trials(study_id)] == trials
        assert _best_at(pg_url, renamed) == best and tuner_rows(study_id, trials) == rows
        assert _call("DELETE", f"{url}api/studies/{study_id}", {})[0] == 204
        assert tuner_rows(study_id, trials) == 0
    finally:
        server.shutdown()
        server.server_close()
        for leftover in (name, renamed):
            if leftover in storage.study_names():
                storage.delete_study(storage.optuna.get_study_id_from_name(leftover))
        storage.engine.dispose()


def _best_at(url: str, name: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(cli, ["best", "--study", name, "--storage", url,
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)
