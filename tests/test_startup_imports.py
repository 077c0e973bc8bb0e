"""The commands that only list or read answer without importing torch (or scikit-learn,
SciPy, pandas, matplotlib, plotly): each runs in a fresh interpreter, in-process, and
reports what it imported. The catalogue's light copies of the vocabulary they need
(datasets, metrics, trial states) are checked against the modules that use them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from tuner.catalogue import DATASET_KINDS, DATASET_NAMES, METRIC_KINDS, TRIAL_STATES
from tuner.run.study import open_study
from tuner.space import parse_space, sample
from tuner.storage import TunerStorage, close_connections
from tuner.storage.optuna_compat import study_id_of, trial_id_of

ROOT = Path(__file__).resolve().parent.parent
# What none of these commands needs.
HEAVY = ("torch", "sklearn", "scipy", "pandas", "matplotlib", "plotly")

# Runs `tuner ARGS...` in this interpreter, then writes what it imported to the file
# TUNER_PROBE names.
PROBE = """
import json, os, sys
from tuner.cli import cli
try:
    cli(args=sys.argv[1:], prog_name="tuner")
    code = 0
except SystemExit as exit:
    code = exit.code
with open(os.environ["TUNER_PROBE"], "w") as out:
    json.dump({"code": code, "modules": sorted(m.partition(".")[0] for m in sys.modules)}, out)
"""

SPACE: dict[str, Any] = {
    "description": "startup test space",
    "trials": 3,
    "task": {"dataset": "iris", "model": "mlp", "epochs": 2},
    "sampler": {"name": "random"},
    "pruner": {"name": "none"},
    "params": {"hidden": 16, "lr": {"low": 1e-3, "high": 1e-1, "log": True}},
}


@pytest.fixture(scope="module")
def storage_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A study the tuner created, with three trials told by hand (nothing trained)."""
    from tuner.train.loop import EpochMetrics

    url = f"sqlite:///{tmp_path_factory.mktemp('startup') / 'tuner.db'}"
    storage = TunerStorage(url, heartbeat=False).open()
    space = parse_space(SPACE, name="startup", source="test")
    study = open_study(storage, space, "S")
    for value in (0.9, 0.95, 0.8):
        trial = study.ask()
        sample(space.params, trial)
        history = [EpochMetrics(epoch=e, train_loss=1.0, val_loss=1.0, val_metric=value,
                                lr=0.01, seconds=0.1) for e in (1, 2)]
        storage.record_trial(trial_id=trial_id_of(trial), study_id=study_id_of(study), seed=7,
                             best_epoch=2, outcome="completed", device="cpu", history=history)
        study.tell(trial, value)
    close_connections(storage)
    return url


def _run(args: list[str], storage_url: str, tmp_path: Path) -> tuple[int, str, set[str]]:
    """Exit code, stdout and the top-level modules imported of ``tuner ARGS``."""
    probe = tmp_path / "probe.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TUNER_STORAGE": storage_url,
           "TUNER_PROBE": str(probe), "COLUMNS": "120"}
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(probe.read_text())
    return report["code"], done.stdout, set(report["modules"])


# Each command, and what its output must say.
COMMANDS = {
    "spaces": (["spaces"], ["quick ", "regularization ", "digits/mlp, 60 trials"]),
    "help": (["--help"], ["Usage: tuner [OPTIONS] COMMAND", "spaces", "studies", "best"]),
    "version": (["--version"], ["tuner, version"]),
    "start-help": (["start", "--help"], ["Usage: tuner start [OPTIONS]",
                                         "Run a study, or resume it"]),
    "trials-help": (["trials", "--help"], ["Usage: tuner trials [OPTIONS]", "--where"]),
    "studies": (["studies"], ["study", "maximize", "0.95"]),
    "trials": (["trials", "--study", "S"], ["number", "complete", "0.95", "0.9", "0.8"]),
    "best": (["best", "--study", "S"], ["Best trial #1: validation accuracy 0.9500",
                                        "epoch 2, seed 7", "lr"]),
    "curves": (["curves", "--study", "S"], ["No --trial given: the best trial, #1",
                                            "val_metric"]),
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_listing_and_reading_commands_import_no_torch(name: str, storage_url: str,
                                                       tmp_path: Path) -> None:
    args, expected = COMMANDS[name]
    code, out, modules = _run(args, storage_url, tmp_path)
    assert code == 0, out
    for text in expected:
        assert text in out, out
    imported = [m for m in HEAVY if m in modules]
    assert imported == [], f"tuner {' '.join(args)} imported {', '.join(imported)}"


@pytest.mark.parametrize("args", [["--help"], ["--version"]])
def test_help_and_version_import_neither_optuna_nor_sqlalchemy(args: list[str],
                                                               storage_url: str,
                                                               tmp_path: Path) -> None:
    _, _, modules = _run(args, storage_url, tmp_path)
    assert not modules & {"optuna", "sqlalchemy", "rich", "yaml", "numpy"}


@pytest.mark.parametrize("name", ["studies", "trials", "best", "curves"])
def test_reading_a_current_database_loads_no_alembic(name: str, storage_url: str,
                                                     tmp_path: Path) -> None:
    """Optuna's schema check (alembic and its migration scripts) is left out when the
    database's revision is the installed Optuna's (tuner.storage.optuna_compat)."""
    _, _, modules = _run(COMMANDS[name][0], storage_url, tmp_path)
    assert "alembic" not in modules


# -- the catalogue's light copies ---------------------------------------------------------

def test_the_catalogues_datasets_are_the_loaders() -> None:
    from tuner.data.builtin import DATASETS

    assert tuple(DATASETS) == DATASET_NAMES == tuple(DATASET_KINDS)
    for name, info in DATASETS.items():
        assert DATASET_KINDS[name].task == info.task, name
        assert DATASET_KINDS[name].image == (info.image_shape is not None), name


def test_the_catalogues_metrics_are_the_training_loops() -> None:
    from tuner.train.metrics import METRICS

    assert list(METRICS) == list(METRIC_KINDS)
    for name, metric in METRICS.items():
        assert (metric.name, metric.task, metric.direction) == (
            name, *METRIC_KINDS[name]), name


def test_the_catalogues_trial_states_are_optunas() -> None:
    from tuner.queries import STATES

    assert STATES == TRIAL_STATES
    assert {s.name.lower() for s in TrialState} == set(TRIAL_STATES)
