"""`tuner bench startup` (tuner/bench/_startup.py, _startup_steps.py) and
benchmarks/whole_process.py: every row is there with positive seconds, on a tiny budget
(the figures themselves are a benchmark's, in docs/performance.md, not a test's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tuner.bench import _startup, _startup_steps
from tuner.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def test_every_step_has_a_row_name() -> None:
    assert set(_startup.STEP_NAMES) == {*_startup_steps.STEPS, *_startup.PARTS, "exit"}
    assert list(_startup_steps.STEPS)[-1] == "trial"  # its parts and the exit go under it


def test_import_seconds_counts_the_steps_own_imports_by_package() -> None:
    stderr = "\n".join([
        "import time: self [us] | cumulative | imported package",
        "import time:      5000 |       5000 | torch",  # before the step: not counted
        _startup_steps.BEGIN,
        "import time:      1000 |       1000 |   sqlalchemy.sql",
        "import time:      2000 |       3000 | sqlalchemy",
        "import time:       500 |        500 | click",
        "a warning",
        _startup_steps.END,
        "import time:      7000 |       7000 | rich",
    ])
    assert _startup.import_seconds(stderr) == {"sqlalchemy": 0.003, "click": 0.0005}


def test_a_row_is_measured_against_its_target() -> None:
    row = _startup.StartupRow(_startup.WHOLE, "tuner studies", 0.6, 0.4)
    assert row.of_target == pytest.approx(1.5)
    assert row.to_dict()["of_target"] == 1.5
    assert _startup.StartupRow(_startup.STEP, "import torch", 0.8).of_target is None


@pytest.mark.slow
def test_startup_bench_prints_every_row_with_positive_seconds(tiny_path: Path) -> None:
    result = CliRunner().invoke(cli, ["bench", "startup", "--repeat", "1", "--space",
                                      str(tiny_path), "--device", "cpu", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    steps = [r["step"] for r in rows if r["part"] == _startup.STEP]
    assert steps == [*_startup.STEP_NAMES.values(), "the steps, in all"]
    whole = {r["step"].split(" (")[0].split(" --")[0]: r for r in rows
             if r["part"] == _startup.WHOLE}
    assert set(whole) == {"python -c pass", 'python -c "import torch"',
                          'python -c "import optuna"', "tuner start", "tuner spaces",
                          "tuner studies", "tuner trials", "tuner best"}
    assert all(r["seconds"] > 0 for r in rows), rows
    for name in ("tuner start", "tuner spaces", "tuner studies", "tuner trials", "tuner best"):
        assert whole[name]["target_s"] > 0 and whole[name]["of_target"] > 0
    assert whole["tuner start"]["target_s"] == pytest.approx(
        whole['python -c "import torch"']["seconds"] + _startup.START_TARGET_S, abs=1e-3)


@pytest.mark.slow
def test_whole_process_script_prints_the_recipe_and_the_tuner() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "whole_process.py"),
                           "--trials", "2", "--epochs", "1", "--seeds", "1", "--population",
                           "2", "--format", "json"],
                          capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    rows = {r["variant"]: r for r in json.loads(done.stdout)}
    assert set(rows) == {"recipe", "sequential", "fused"}
    assert all(r["median_wall_s"] > 0 and 0 < r["median_best"] <= 1 for r in rows.values())
    assert rows["recipe"]["speedup"] == 1.0
