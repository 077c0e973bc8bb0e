"""`tuner upgrade`: Optuna's schema migration on a database that holds the tuner's views,
from Optuna's own old-schema fixtures (its source distribution's test assets)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from click.testing import CliRunner

from tests.optuna_source import optuna_source_dir
from tuner.cli import cli
from tuner.storage._schema import SCHEMA_VERSION, drop_views, ensure_schema
from tuner.storage._views import VIEWS, view_sql

FIXTURES = ("0.9.0.a", "1.2.0.a", "1.3.0.a", "2.4.0.a")


def _fixture(version: str, tmp_path: Path) -> Path:
    assets = optuna_source_dir() / "tests" / "storages_tests" / "rdb_tests" / "test_upgrade_assets"
    target = tmp_path / f"{version}.db"
    shutil.copy(assets / f"{version}.db", target)
    return target


def _with_tuner_schema(url: str) -> None:
    """What an older tuner left in the database: its tables, ties and views."""
    engine = sqlalchemy.create_engine(url)
    try:
        ensure_schema(engine, url)
    finally:
        engine.dispose()


def _revision(url: str) -> str:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(sqlalchemy.text(
                "SELECT version_num FROM alembic_version")).scalar_one())
    finally:
        engine.dispose()


# The newest schema in the quick run (-m "not slow"), the older ones with the rest.
@pytest.mark.parametrize("version", [*(pytest.param(v, marks=pytest.mark.slow)
                                       for v in FIXTURES[:-1]), FIXTURES[-1]])
def test_tuner_upgrade_migrates_optunas_old_schemas_past_the_views(
        version: str, tmp_path: Path, runner: CliRunner) -> None:
    db = _fixture(version, tmp_path)
    url = f"sqlite:///{db}"
    _with_tuner_schema(url)
    # The views stand in the way of Optuna's own command (its table rebuilds).
    blocked = tmp_path / "blocked.db"
    shutil.copy(db, blocked)
    optuna_cli = str(Path(sys.executable).with_name("optuna"))
    plain = subprocess.run([optuna_cli, "storage", "upgrade", "--storage",
                            f"sqlite:///{blocked}"], capture_output=True, text=True, timeout=300)
    assert plain.returncode != 0
    # Before: the tuner refuses the old schema in one line that names the command.
    refused = runner.invoke(cli, ["studies", "--storage", url])
    assert refused.exit_code == 1
    assert f"run `tuner upgrade --storage {url}`" in refused.output
    result = runner.invoke(cli, ["upgrade", "--storage", url])
    assert result.exit_code == 0, result.output
    head = optuna.storages.RDBStorage(url).get_head_version()
    assert _revision(url) == head
    assert f"from Optuna schema v{version} to {head}" in result.output
    with sqlite3.connect(db) as conn:
        names = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('view', 'trigger')")}
        assert set(VIEWS) | {"tuner_trial_deleted", "tuner_study_deleted"} <= names
        assert conn.execute("SELECT version FROM tuner_schema").fetchone() == (SCHEMA_VERSION,)
        assert not conn.execute("SELECT name FROM sqlite_master WHERE name LIKE "
                                "'_alembic_tmp%'").fetchall()
        summary = conn.execute("SELECT study, COUNT(*) FROM trial_summary GROUP BY study"
                               ).fetchall()
    # Optuna reads the same studies and trials the view shows.
    studies = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(url)}
    assert dict(summary) == {name: n for name, n in studies.items() if n}
    again = runner.invoke(cli, ["upgrade", "--storage", url])
    assert again.exit_code == 0 and "already has the current Optuna schema" in again.output


@pytest.fixture
def pg_database(pg_url: str) -> Iterator[str]:
    """A throwaway database on the test server, dropped afterwards."""
    admin = sqlalchemy.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1),
                                     isolation_level="AUTOCOMMIT")
    name = f"tuner_upgrade_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    url = sqlalchemy.make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.mark.slow
def test_tuner_upgrade_on_postgres_from_an_older_optuna_schema(
        pg_database: str, tmp_path: Path, runner: CliRunner) -> None:
    from tests.test_workers import tiny_space

    started = runner.invoke(cli, ["start", "--space", str(tiny_space(tmp_path)), "--study",
                                  "up", "--storage", pg_database, "--trials", "2", "--quiet"])
    assert started.exit_code == 0, started.output
    before = runner.invoke(cli, ["best", "--study", "up", "--storage", pg_database,
                                 "--format", "json"]).output
    # Back to Optuna's v3.0.0.c schema with the tuner's views over it, through Optuna's
    # own migration scripts (its downgrade needs the index under the name it gave it).
    url = pg_database.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        drop_views(conn)
        conn.execute(sqlalchemy.text("CREATE INDEX trials_study_id_key ON trials (study_id)"))
    rdb = optuna.storages.RDBStorage(url, skip_compatibility_check=True,
                                     skip_table_creation=True)
    import alembic.command

    config = rdb._version_manager._create_alembic_config()
    alembic.command.downgrade(config, "v3.0.0.c")
    with engine.begin() as conn:
        for name, body in view_sql("postgresql").items():
            conn.execute(sqlalchemy.text(f"CREATE VIEW {name} AS {body}"))
    rdb.engine.dispose()
    result = runner.invoke(cli, ["upgrade", "--storage", pg_database])
    assert result.exit_code == 0, result.output
    assert "from Optuna schema v3.0.0.c to" in result.output
    assert _revision(url) == optuna.storages.RDBStorage(url).get_head_version()
    with engine.connect() as conn:
        views = set(sqlalchemy.inspect(conn).get_view_names())
        ties = set(conn.execute(sqlalchemy.text(
            "SELECT conname FROM pg_constraint WHERE conname LIKE 'tuner_%_cascade'")).scalars())
    engine.dispose()
    assert set(VIEWS) <= views and len(ties) == 6
    after = runner.invoke(cli, ["best", "--study", "up", "--storage", pg_database,
                                "--format", "json"]).output
    # The same best trial, with its tuner rows (seed, best epoch, test metric).
    assert json.loads(after) == json.loads(before) and json.loads(before)[0]["seed"] is not None
