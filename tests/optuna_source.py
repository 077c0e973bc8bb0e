"""Optuna's source distribution, of the installed version, for tests that need Optuna's own
test suite or its test fixtures (which the wheel does not ship).

>>> source = optuna_source_dir()  # inside a test or fixture
>>> (source / "tests" / "storages_tests" / "test_storages.py").is_file()
True
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import optuna
import pytest

# An extracted copy to use instead of the cache (a machine without access to PyPI).
SOURCE_ENV = "TUNER_OPTUNA_SOURCE"
DOWNLOAD_TIMEOUT = 300  # seconds; the sdist is half a megabyte


def cache_dir() -> Path:
    """Where the extracted sources are kept, one folder per version:
    ``$XDG_CACHE_HOME/tuner-tests`` (``~/.cache/tuner-tests`` by default)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "tuner-tests"


def optuna_source_dir() -> Path:
    """The extracted source distribution of the installed Optuna (its ``tests/``,
    ``pyproject.toml``, ...): ``$TUNER_OPTUNA_SOURCE`` if set, else
    ``<cache_dir()>/optuna-<version>``, downloaded there with pip and extracted on the
    first call (atomically, so concurrent test runs share one copy).

    Where the source cannot be had (no network, a version not on PyPI) the calling test
    is skipped with a message saying how to provide it, or, with
    ``TUNER_REQUIRE_SERVICES=1`` (as in CI), fails.
    """
    version = optuna.__version__
    given = os.environ.get(SOURCE_ENV)
    if given:
        problem = _problem(Path(given), version)
        if problem:
            _unavailable(f"{SOURCE_ENV}={given} is not Optuna {version}'s extracted source "
                         f"distribution: {problem}")
        return Path(given)
    target = cache_dir() / f"optuna-{version}"
    if _problem(target, version) is None:
        return target
    try:
        _download(version, target)
    except (OSError, subprocess.SubprocessError, tarfile.TarError, ValueError) as exc:
        _unavailable(f"cannot download Optuna {version}'s source distribution into "
                     f"{target} ({_first_line(exc)}); allow pip to reach PyPI once, or "
                     f"extract `pip download optuna=={version} --no-binary :all: --no-deps` "
                     f"there, or set {SOURCE_ENV} to an extracted copy")
    problem = _problem(target, version)
    if problem:
        _unavailable(f"the download of Optuna {version}'s source distribution into {target} "
                     f"is not usable: {problem}")
    return target


def _problem(path: Path, version: str) -> str | None:
    """Why ``path`` is not the extracted sdist of Optuna ``version``, or None."""
    try:
        info = (path / "PKG-INFO").read_text(encoding="utf-8")
    except OSError:
        return "no PKG-INFO"
    if f"\nVersion: {version}\n" not in info:
        return f"its PKG-INFO is not version {version}'s"
    if not (path / "tests").is_dir():
        return "no tests/ folder"
    return None


def _download(version: str, target: Path) -> None:
    """Fetch the sdist with pip and extract it to ``target``, which appears whole or not
    at all (another process may win the race; its copy is as good)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".optuna-{version}-", dir=target.parent))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", f"optuna=={version}", "--no-binary",
             ":all:", "--no-deps", "--quiet", "--disable-pip-version-check", "-d", str(work)],
            capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT, check=False)
        archives = sorted(work.glob("optuna-*.tar.gz"))
        if done.returncode != 0 or not archives:
            raise OSError(_last_line(done.stderr) or f"pip exited with {done.returncode}")
        with tarfile.open(archives[0]) as tar:
            # "data" refuses links and paths out of the folder (Python >= 3.10.12).
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(work / "x", **kwargs)
        extracted = work / "x" / f"optuna-{version}"
        if not extracted.is_dir():
            raise ValueError(f"the archive {archives[0].name} has no optuna-{version}/")
        if target.exists() and _problem(target, version) is not None:
            shutil.rmtree(target)  # a broken copy (copies only ever appear whole)
        try:
            extracted.rename(target)
        except OSError:
            if _problem(target, version) is not None:  # not a concurrent run's copy
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _unavailable(message: str) -> None:
    if os.environ.get("TUNER_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
