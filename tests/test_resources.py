"""Inputs that would exhaust the machine: refused before the study, or a trial that runs
out of memory and says so, with the size that did it. Checked in subprocesses under a
memory limit (`resource`), not by timing."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS: Linux"),
              pytest.mark.slow]

LIMIT = 3 * 2 ** 30  # address space of the tuner under test: torch alone maps ~1 GiB


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def tuner(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tuner", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=300, preexec_fn=_limited,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_trial_that_runs_out_of_memory_says_so_with_the_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(100, 3)), columns=["a", "b", "c"])
    frame["y"] = np.where(frame["a"] > 0, "p", "n")
    frame.to_csv(tmp_path / "d.csv", index=False)
    # Builds, and passes the check on two examples (eval mode); training asks for 8 GiB.
    (tmp_path / "hungry.py").write_text(
        "import torch\nimport torch.nn as nn\n"
        "class Hungry(nn.Linear):\n"
        "    def forward(self, x):\n"
        "        if self.training:\n"
        "            torch.empty(2 ** 31, dtype=torch.float32)\n"
        "        return super().forward(x)\n"
        "def build(config, input_shape, n_outputs):\n"
        "    return Hungry(input_shape[0], n_outputs)\n")
    (tmp_path / "s.yaml").write_text(
        "task: {model: 'hungry.py:build', epochs: 1}\nsampler: {name: random}\n"
        "pruner: {name: none}\nparams: {lr: 0.01, hidden: 8}\n")
    url = f"sqlite:///{tmp_path / 'm.db'}"
    result = tuner("start", "--space", "s.yaml", "--data", "d.csv", "--target", "y",
                   "--trials", "1", "--storage", url, "--quiet", "--study", "m", cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "Traceback" not in out
    assert "ran out of memory training the model (8.0 GiB in one allocation)" in out
    failed = optuna.load_study(study_name="m", storage=url).trials
    assert failed and all(t.state.name == "FAIL" for t in failed)
    assert failed[0].user_attrs["error"].startswith("ran out of memory training the model")
