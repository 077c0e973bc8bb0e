"""The example project (examples/digits_project) as a user runs it: its own network,
knobs, metric and Datasets, its own loop, and an export that works once it has moved."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from click.testing import CliRunner
from sklearn.datasets import load_digits

import tuner
from tuner.cli import cli
from tuner.errors import DataError

PROJECT = Path(__file__).resolve().parent.parent / "examples" / "digits_project"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the project, as the current directory (the space's paths are relative)."""
    folder = tmp_path / "digits_project"
    shutil.copytree(PROJECT, folder, ignore=shutil.ignore_patterns("storage", "__pycache__"))
    monkeypatch.chdir(folder)
    return folder


def _start(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(cli, ["start", "--space", "space.yaml", "--epochs", "3", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_the_example_project_runs_exports_and_predicts_after_it_has_moved(
        runner: CliRunner, project: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = _start(runner, "--study", "cnn", "--trials", "3")
    assert "data.py:load / model.py:build" in out
    assert "data: Datasets through a DataLoader" in out
    assert "validation macro_f1" in out and "test macro_f1" in out
    storage = f"sqlite:///{project / 'storage' / 'tuner.db'}"
    trials = optuna.load_study(study_name="cnn", storage=storage).trials
    assert {"width_mult", "kernel_size", "dropout", "lr"} <= set(trials[0].params)
    exported = runner.invoke(cli, ["export", "--study", "cnn", "--out", "cnn.pt"])
    assert exported.exit_code == 0, exported.output
    assert "(macro_f1 " in exported.output

    # Elsewhere, with the project gone from where it ran.
    moved = tmp_path / "moved"
    shutil.move(str(project), moved)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    x, y = load_digits(return_X_y=True)
    np.savez("new.npz", x=x[:50] / 16.0)
    model_file = str(moved / "cnn.pt")
    refused = runner.invoke(cli, ["predict", "--model", model_file, "--data", "new.npz"])
    assert refused.exit_code == 2
    assert "it carries the source of its network's builder (model.py, function build" in \
        refused.output and "pass --trust-code" in refused.output
    assert refused.output.count("\n") == 1
    with pytest.raises(DataError, match="pass --trust-code"):
        tuner.load_model(model_file)
    trusted = runner.invoke(cli, ["predict", "--model", model_file, "--data", "new.npz",
                                  "--trust-code", "--proba"])
    assert trusted.exit_code == 0, trusted.output
    rows = _csv(trusted.output)
    assert rows[0] == ["prediction", *(f"proba_{c}" for c in range(10))]
    model = tuner.load_model(model_file, trust_code=True)
    predicted = model.predict(x[:50] / 16.0)
    assert [int(r[0]) for r in rows[1:]] == predicted
    probabilities = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert probabilities.argmax(axis=1).tolist() == predicted
    expected = torch.softmax(model(torch.tensor(x[:50] / 16.0)), dim=-1).detach().numpy()
    assert np.allclose(probabilities, expected, atol=1e-6)
    assert np.mean(np.array(predicted) == y[:50]) > 0.7  # 3 epochs: it has learned digits

    # In the moved project the same model.py is importable with the same source: no trust
    # is asked, and the network is the project's own class.
    monkeypatch.chdir(moved)
    here = runner.invoke(cli, ["predict", "--model", "cnn.pt", "--data", str(elsewhere /
                                                                             "new.npz")])
    assert here.exit_code == 0, here.output
    assert [int(r[0]) for r in _csv(here.output)[1:]] == predicted
    assert type(tuner.load_model("cnn.pt").network).__name__ == "DigitsCNN"
    # An edited builder is not the one the file carries: trust is asked again.
    (moved / "model.py").write_text((moved / "model.py").read_text() + "\n# edited\n")
    with pytest.raises(DataError, match="pass --trust-code"):
        tuner.load_model("cnn.pt")


def test_the_example_projects_own_loop_runs_with_the_same_space(runner: CliRunner,
                                                                project: Path) -> None:
    out = _start(runner, "--study", "own", "--trials", "2", "--objective", "train.py:fit")
    assert "data.py:load / objective train.py:fit" in out
    curves = runner.invoke(cli, ["curves", "--study", "own", "--trial", "0",
                                 "--format", "json"])
    rows = json.loads(curves.output)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(0 <= r["accuracy"] <= 1 and 0 <= r["val_metric"] <= 1 for r in rows)
    refused = runner.invoke(cli, ["export", "--study", "own", "--out", "own.pt"])
    assert refused.exit_code == 2
    assert "trained with your own function (objective train.py:fit)" in refused.output


def test_an_export_refuses_a_builder_that_imports_files_beside_it(
        runner: CliRunner, tmp_path: Path, write_space, storage_url: str) -> None:
    (tmp_path / "layers.py").write_text("import torch.nn as nn\nBlock = nn.Linear\n")
    (tmp_path / "net.py").write_text("import torch\nfrom layers import Block\n"
                                     "def build(config, input_shape, n_outputs):\n"
                                     "    return Block(input_shape[0], n_outputs)\n")
    space = write_space({"task": {"dataset": "iris", "epochs": 2}, "pruner": {"name": "none"},
                         "params": {"hidden": 8}})
    started = runner.invoke(cli, ["start", "--space", str(space), "--storage", storage_url,
                                  "--trials", "1", "--quiet", "--model", "net.py:build"])
    assert started.exit_code == 0, started.output  # the file's folder is on the import path
    result = runner.invoke(cli, ["export", "--study", "tiny", "--storage", storage_url,
                                 "--out", "m.pt"])
    assert result.exit_code == 2
    assert "net.py imports layers from beside it, which an export cannot carry" in result.output
    assert not (tmp_path / "m.pt").exists()


def test_proba_is_refused_for_a_regression(runner: CliRunner, write_space,
                                           storage_url: str, tmp_path: Path) -> None:
    space = write_space({"task": {"dataset": "diabetes", "epochs": 2}, "pruner":
                         {"name": "none"}, "params": {"hidden": 8}})
    assert runner.invoke(cli, ["start", "--space", str(space), "--storage", storage_url,
                               "--trials", "1", "--quiet"]).exit_code == 0
    assert runner.invoke(cli, ["export", "--study", "tiny", "--storage", storage_url,
                               "--out", "r.pt"]).exit_code == 0
    np.savez("x.npz", x=np.zeros((3, 10)))
    result = runner.invoke(cli, ["predict", "--model", "r.pt", "--data", "x.npz", "--proba"])
    assert result.exit_code == 2
    assert "--proba: the model is a regression" in result.output
