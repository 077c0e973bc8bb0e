"""Shared fixtures: a CLI runner, a throwaway SQLite database, tiny search spaces."""

from __future__ import annotations

import copy
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from click.testing import CliRunner

# Small enough that a trial takes a fraction of a second on a CPU: iris, one hidden
# layer of 16 units, 2 epochs. The optimizer is a choice with a conditional
# hyper-parameter, so the tiny study exercises the conditional path too.
TINY_SPACE: dict[str, Any] = {
    "description": "tiny test space",
    "trials": 3,
    "seed": 0,
    "task": {"dataset": "iris", "model": "mlp", "epochs": 2},
    "sampler": {"name": "random"},
    "pruner": {"name": "none"},
    "params": {
        "hidden": 16,
        "layers": 1,
        "batch_size": 32,
        "lr": {"low": 1e-3, "high": 1e-1, "log": True},
        "optimizer": {"choices": {"adam": {}, "momentum": {"momentum": {"low": 0.5,
                                                                         "high": 0.9}}}},
    },
}

SpaceWriter = Callable[..., Path]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run every test in its own directory, so a default `storage/tuner.db` never lands
    in the repository, and keep the environment's storage and device out of the way."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUNER_STORAGE", raising=False)
    monkeypatch.delenv("TUNER_DEVICE", raising=False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield


@pytest.fixture(autouse=True, scope="session")
def _data_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The built-in datasets' cache (tuner.data.cache) in a folder of the test session's
    own, never the user's ~/.cache: set in the environment, so that the command lines and
    workers the tests start use it too. One per xdist worker; the tests share it, warm."""
    folder = tmp_path_factory.mktemp("tuner-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNER_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the test's SQLite database lives (not created yet)."""
    return tmp_path / "db" / "tuner.db"


@pytest.fixture
def storage_url(db_path: Path) -> str:
    return f"sqlite:///{db_path}"


@pytest.fixture(scope="session")
def tiny_space_template() -> Mapping[str, Any]:
    """The tiny space mapping, for session- and module-scoped fixtures (do not mutate)."""
    return TINY_SPACE


@pytest.fixture
def tiny_space() -> dict[str, Any]:
    """A fresh, mutable copy of the tiny space mapping."""
    return copy.deepcopy(TINY_SPACE)


@pytest.fixture
def write_space(tmp_path: Path) -> SpaceWriter:
    """Write a space (a mapping, or YAML text as is) to ``tmp_path/spaces/<name>.yaml``."""

    def write(content: Mapping[str, Any] | str, name: str = "tiny") -> Path:
        folder = tmp_path / "spaces"
        folder.mkdir(exist_ok=True)
        path = folder / f"{name}.yaml"
        text = content if isinstance(content, str) else yaml.safe_dump(dict(content),
                                                                         sort_keys=False)
        path.write_text(text)
        return path

    return write


@pytest.fixture
def tiny_path(write_space: SpaceWriter, tiny_space: dict[str, Any]) -> Path:
    return write_space(tiny_space)


def _snapshot(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr)
                for t in tables}
    finally:
        conn.close()


@pytest.fixture
def db_snapshot() -> Callable[[Path], dict[str, list[tuple[Any, ...]]]]:
    """Every row of every table of a SQLite file, for before/after comparisons."""
    return _snapshot


POSTGRES_URL = os.environ.get("TUNER_TEST_POSTGRES_URL",
                              "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def pg_url() -> str:
    """A reachable PostgreSQL database, or a skip that says how to get one.

    With TUNER_REQUIRE_SERVICES=1 (as in CI) a missing server fails the test instead.
    """
    import sqlalchemy

    url = POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:  # any failure means no usable server
        message = (f"no PostgreSQL server at {POSTGRES_URL} ({type(exc).__name__}); set "
                   "TUNER_TEST_POSTGRES_URL to a reachable database to run these tests")
        if os.environ.get("TUNER_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_URL


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread (as tuner.train.device sets for CPU trials):
    thread hand-offs cost more than the arithmetic, more so on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
