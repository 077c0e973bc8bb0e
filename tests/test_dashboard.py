"""`tuner dashboard` (tuner/dashboard/server.py): optuna-dashboard served over the study database,
checked in a real headless browser (Debian's chromium and chromedriver, driven by
Selenium), against a running study, and stopped with Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tuner.dashboard.server import dashboard_url, make_dashboard
from tuner.storage import TunerStorage

CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1280,900")


def _study(storage: TunerStorage, name: str, n: int) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=storage.optuna, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(n):
        trial = study.ask()
        x = trial.suggest_float("dropout", 0.0, 0.5)
        trial.report(x, 1)
        study.tell(trial, state=TrialState.PRUNED) if i == 2 else study.tell(trial, x)
    return study


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        return json.loads(response.read())


class Served:
    def __init__(self, storage: TunerStorage) -> None:
        self.server = make_dashboard(storage, "127.0.0.1", 0)
        self.url = dashboard_url(self.server)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def served_sqlite(storage_url: str) -> Iterator[tuple[Served, optuna.Study]]:
    writer = TunerStorage(storage_url, heartbeat=False).open()
    study = _study(writer, "dash-study", 7)
    writer.engine.dispose()
    served = Served(TunerStorage(storage_url, create=False, heartbeat=False).open())
    yield served, study
    served.stop()


@pytest.fixture(scope="module")
def chrome() -> Iterator[Any]:
    """A headless Chromium driven by Selenium, or a skip that says what to install.

    With TUNER_REQUIRE_SERVICES=1 (as in CI, whose script installs them) a missing
    browser fails the test instead.
    """
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None  # type: ignore[assignment]
    if binary is None or driver_path is None or webdriver is None:
        message = ("the browser test needs Debian's `chromium` and `chromium-driver` packages "
                   "and the `selenium` package (pip install -e '.[dev]')")
        if os.environ.get("TUNER_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    import tempfile

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    profile = tempfile.mkdtemp(prefix="tuner-chrome-")
    for flag in (*CHROME_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _body_text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.TAG_NAME, "body").text)


@pytest.mark.slow
def test_the_browser_lists_the_study_and_its_trial_count(
        chrome: Any, served_sqlite: tuple[Served, optuna.Study], db_path: Path,
        db_snapshot: Any) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    served, study = served_sqlite
    before = db_snapshot(db_path)
    chrome.get(served.url)
    # A React app: the study appears once its JavaScript has fetched the list.
    WebDriverWait(chrome, 60).until(lambda d: "dash-study" in _body_text(d))
    assert "Direction: MAXIMIZE" in _body_text(chrome)
    n_trials = len(optuna.load_study(study_name="dash-study", storage=study._storage).trials)
    chrome.get(f"{served.url}dashboard/studies/{study._study_id}/trials")
    WebDriverWait(chrome, 60).until(lambda d: f"{n_trials} Trials" in _body_text(d))
    assert "Pruned" in _body_text(chrome) and "Complete" in _body_text(chrome)
    assert db_snapshot(db_path) == before  # browsing changed nothing


@pytest.mark.postgres
@pytest.mark.slow
def test_dashboard_on_postgresql(pg_url: str) -> None:
    name = f"dash-{uuid.uuid4().hex[:8]}"
    writer = TunerStorage(pg_url, heartbeat=False).open()
    study = _study(writer, name, 4)
    served = Served(TunerStorage(pg_url, create=False, heartbeat=False).open())
    try:
        names = [s["study_name"] for s in _get(served.url + "api/studies")["study_summaries"]]
        assert name in names
        detail = _get(f"{served.url}api/studies/{study._study_id}?after=0")
        assert len(detail["trials"]) == 4
    finally:
        served.stop()
        optuna.delete_study(study_name=name, storage=writer.optuna)


@pytest.mark.slow
def test_an_open_dashboard_does_not_lock_a_running_study(tmp_path: Path,
                                                         tiny_space: dict[str, Any]) -> None:
    """`tuner start` writes while the dashboard polls as fast as it can: no "database is
    locked", every trial finished, every poll answered."""
    db = tmp_path / "tuner.db"
    url = f"sqlite:///{db}"
    TunerStorage(url, heartbeat=False).open().engine.dispose()
    optuna.create_study(study_name="warmup", storage=url)  # so the dashboard has a list
    served = Served(TunerStorage(url, create=False, heartbeat=False).open())
    space = tmp_path / "tiny.yaml"
    tiny_space["task"]["epochs"] = 3
    space.write_text(yaml.safe_dump(tiny_space))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuner", "start", "--space", str(space), "--storage", url,
         "--trials", "8", "--study", "live", "--device", "cpu", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    polls, seen, live = 0, 0, None

    def trials_shown() -> int:
        nonlocal live
        if live is None:
            summaries = _get(served.url + "api/studies")["study_summaries"]
            live = next((s["study_id"] for s in summaries if s["study_name"] == "live"), None)
        return 0 if live is None else len(_get(f"{served.url}api/studies/{live}?after=0")[
            "trials"])

    try:
        while proc.poll() is None:
            seen = max(seen, trials_shown())
            polls += 1
        out, err = proc.communicate(timeout=60)
        # optuna-dashboard keeps a study's trials for 2-10 s before it reads them again:
        # a study shorter than that shows its trials once the copy is renewed.
        deadline = time.monotonic() + 15
        while seen < 8 and time.monotonic() < deadline:
            seen = max(seen, trials_shown())
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        served.stop()
    assert proc.returncode == 0, err
    assert "locked" not in out + err
    study = optuna.load_study(study_name="live", storage=url)
    assert sum(t.state.is_finished() for t in study.trials) == 8
    assert all(t.state != TrialState.FAIL for t in study.trials)
    assert polls > 5  # the dashboard was reading while the study ran
    assert seen == 8  # and it shows what the study wrote


@pytest.mark.slow
def test_ctrl_c_stops_the_dashboard_cleanly(storage_url: str) -> None:
    storage = TunerStorage(storage_url, heartbeat=False).open()
    _study(storage, "ctrl-c", 3)
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "dashboard", "--storage",
                             storage_url, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"at (http://127\.0\.0\.1:\d+/) \(Ctrl-C to stop\)", line)
        assert match, line
        names = [s["study_name"] for s in _get(match.group(1) + "api/studies")
                 ["study_summaries"]]
        assert names == ["ctrl-c"]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert out.strip() == "Dashboard stopped."
    assert err == ""
    time.sleep(0)  # the port is free again: a new server can bind it
    port = int(match.group(1).rsplit(":", 1)[1].rstrip("/"))
    again = make_dashboard(TunerStorage(storage_url, create=False, heartbeat=False).open(),
                           port=port)
    again.server_close()
