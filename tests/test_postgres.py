"""The study database on a real PostgreSQL server.

The `pg_url` fixture (conftest.py) skips them, saying how to enable them, when no
server answers; with TUNER_REQUIRE_SERVICES=1, as in CI, a missing server fails them.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import optuna
import pytest
import sqlalchemy
import torch
from click.testing import CliRunner

from tuner.cli import cli
from tuner.run.runner import run_study
from tuner.space import parse_space
from tuner.storage import TunerStorage

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

TINY = {
    "trials": 4,
    "task": {"dataset": "iris", "model": "mlp", "epochs": 3},
    "pruner": {"name": "none"},
    "params": {"hidden": 8, "layers": 1, "lr": {"low": 1e-3, "high": 1e-1, "log": True}},
}


@pytest.fixture
def study_name(pg_url: str) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=name, storage=pg_url.replace(
            "postgresql://", "postgresql+psycopg://", 1))


def test_study_reaches_budget_and_reads_back(pg_url: str, study_name: str) -> None:
    storage = TunerStorage(pg_url).open()
    space = parse_space(TINY, name="tiny", source="tiny")
    summary = run_study(space, storage=storage, study_name=study_name, budget=4,
                        device=torch.device("cpu"))
    assert summary.finished == 4
    study = optuna.load_study(study_name=study_name, storage=storage.optuna)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 4
    with storage.session() as conn:
        rows = conn.execute(sqlalchemy.text(
            "SELECT COUNT(*) FROM tuner_epochs e JOIN trials t ON t.trial_id = e.trial_id "
            "WHERE t.study_id = :s"), {"s": study._study_id}).scalar()
    assert rows == sum(len(t.intermediate_values) for t in finished)
    assert summary.best is not None
    assert summary.best.value == max(t.value for t in finished if t.value is not None)


def test_cli_resume_on_postgres(pg_url: str, study_name: str, tmp_path: object) -> None:
    import yaml

    path = os.path.join(str(tmp_path), "tiny.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(TINY, f)
    runner = CliRunner()
    args = ["start", "--space", path, "--study", study_name, "--storage", pg_url, "--quiet"]
    first = runner.invoke(cli, [*args, "--trials", "2"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(cli, [*args, "--trials", "2"])
    assert again.exit_code == 0
    assert "nothing to do" in again.output
    listed = runner.invoke(cli, ["studies", "--storage", pg_url, "--format", "json"])
    assert listed.exit_code == 0
    assert study_name in listed.output
