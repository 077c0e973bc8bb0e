"""Optuna's own storage tests, from the source distribution of the installed Optuna, run
on the tuner's storage classes (``tests/optuna_storage_plugin.py`` says how), so that an
Optuna upgrade is checked against everything the tuner overrides.

The run happens in a subprocess, on xdist workers when pytest-xdist is installed (the
heartbeat tests mostly sleep); it needs the source distribution, see
:func:`optuna_source.optuna_source_dir` (skipped without it, failed under
``TUNER_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.testing.pytest_storages import StorageTestCase
from optuna_source import optuna_source_dir
from optuna_storage_plugin import REPORT_ENV, TUNER_MODES

import tuner

HERE = Path(__file__).resolve().parent
SUITE = (
    "tests/storages_tests/test_storages.py",
    "tests/storages_tests/test_cached_storage.py",
    "tests/storages_tests/test_heartbeat.py",
    "tests/storages_tests/rdb_tests/test_storage.py",
)
WORKERS = 4  # the heartbeat tests sleep for seconds: more workers than cores pay off
TIMEOUT = 900
# Optuna's tests that failed on the tuner's classes before the fixes in tuner.storage._fast.
REGRESSIONS = (
    "tests/storages_tests/test_storages.py::TestStorage::test_set_trial_param[cached_sqlite]",
    "tests/storages_tests/test_cached_storage.py::test_read_trials_from_remote_storage",
)


def _summary(output: str) -> dict[str, int]:
    """The counts of pytest's closing line (``3 failed, 187 passed in 80.1s``)."""
    lines = [line for line in output.splitlines() if re.search(r"\d+ passed", line)]
    assert lines, f"no pytest summary in the output:\n{output[-3000:]}"
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", lines[-1])}


def _run_suite(source: Path, report: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # The plugin, and this tuner ahead of any other.
    path = [str(HERE), str(Path(tuner.__file__).resolve().parents[1]),
            *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, REPORT_ENV: str(report), "PYTHONPATH": os.pathsep.join(path)}
    parallel = (["-n", str(WORKERS), "--dist", "worksteal"]
                if importlib.util.find_spec("xdist") else [])
    # Run from elsewhere than the source, whose optuna/ would shadow the installed one.
    command = [sys.executable, "-m", "pytest", "-p", "optuna_storage_plugin",
               "-p", "no:cacheprovider", "-q", "--color=no", "-rfEs", *parallel,
               f"--rootdir={source}", "-c", str(source / "pyproject.toml"),
               *(str(source / name) for name in SUITE)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)


@pytest.mark.slow
def test_optunas_storage_tests_pass_on_the_tuners_storage(tmp_path: Path) -> None:
    source = optuna_source_dir()
    report = tmp_path / "report.json"
    done = _run_suite(source, report, tmp_path)
    output, exit_code = done.stdout + done.stderr, done.returncode
    assert exit_code == 0, output[-6000:]
    counts = _summary(output)
    ran = json.loads(report.read_text(encoding="utf-8"))
    # The installed Optuna and this tuner, not the source's optuna/ or another checkout.
    assert ran["optuna"] == optuna.__file__
    assert Path(ran["tuner"]).resolve() == Path(tuner.__file__).resolve()

    tests: dict[str, dict[str, Any]] = ran["tests"]
    assert counts["passed"] == sum(t["outcome"] == "passed" for t in tests.values())
    assert not [name for name, t in tests.items() if t["outcome"] == "failed"]
    for name, t in tests.items():  # each test of a tuner's mode built the tuner's classes
        created = t.get("created", {})
        if t["storage_mode"] in TUNER_MODES:
            assert created.get("TunerRDBStorage"), name
        if t["storage_mode"] == "cached_sqlite" or "test_cached_storage.py" in name:
            assert created.get("StudyStorage"), name
    assert not {t["storage_mode"] for t in tests.values()} - {*TUNER_MODES, None}

    # Optuna's storage conformance suite, whole, in both modes; and its other tests too.
    conformance = [m for m in dir(StorageTestCase) if m.startswith("test_")]
    for mode in TUNER_MODES:
        passed = {name.split("::")[-1].split("[")[0] for name, t in tests.items()
                  if t["storage_mode"] == mode and t["outcome"] == "passed"}
        assert passed >= set(conformance), mode
    by_file = {name: sum(n.startswith(name) and t["outcome"] == "passed" and bool(t.get("created"))
                         for n, t in tests.items()) for name in SUITE}
    assert all(by_file.values()), by_file
    for name in REGRESSIONS:
        assert tests[name]["outcome"] == "passed", name
