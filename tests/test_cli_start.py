"""What `tuner start` and `tuner worker` say: the header names the data that trains, counts
read as English, and `--trials` means the study's total for one and a per-process cap for
the other, as their --help says and as the database shows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import optuna
from click.testing import CliRunner, Result
from sklearn.datasets import load_wine

from tuner.cli import cli
from tuner.formatting import plural
from tuner.run.study import BUDGET_ATTR, stored_budget
from tuner.storage import TunerStorage


def _invoke(args: Sequence[str]) -> Result:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_plural() -> None:
    assert [plural(n, "trial") for n in (0, 1, 2)] == ["0 trials", "1 trial", "2 trials"]
    assert plural(1, "process", "processes") == "1 process"
    assert plural(3, "process", "processes") == "3 processes"


def test_the_header_names_your_data_not_the_spaces_dataset(tiny_path: Path, storage_url: str,
                                                           tmp_path: Path) -> None:
    x, y = load_wine(return_X_y=True, as_frame=True)
    data = tmp_path / "measurements.csv"
    x.assign(label=y).to_csv(data, index=False)
    result = _invoke(["start", "--space", str(tiny_path), "--storage", storage_url,
                      "--device", "cpu", "--trials", "1", "--data", str(data),
                      "--target", "label"])
    header = result.stderr.splitlines()[0]
    assert f"{data} / mlp" in header, header
    assert "iris" not in header  # the tiny space's own dataset
    assert "· 1 worker on cpu ·" in header
    with_dataset = _invoke(["start", "--space", str(tiny_path), "--storage", storage_url,
                            "--device", "cpu", "--trials", "1", "--study", "builtin"])
    assert "iris / mlp" in with_dataset.stderr.splitlines()[0]


def test_trials_is_the_studys_total_for_start_and_a_cap_for_worker(tiny_path: Path,
                                                                  storage_url: str) -> None:
    start_help = _invoke(["start", "--help"]).stdout
    worker_help = _invoke(["worker", "--help"]).stdout
    assert "total budget of finished" in " ".join(start_help.split())
    assert "A cap on this worker alone" in " ".join(worker_help.split())

    _invoke(["start", "--space", str(tiny_path), "--storage", storage_url, "--device", "cpu",
             "--trials", "1", "--quiet"])
    _invoke(["start", "--space", str(tiny_path), "--storage", storage_url, "--device", "cpu",
             "--trials", "2", "--quiet"])  # resumed: 2 in all, not 1 + 2
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    assert len(study.trials) == 2 and study.user_attrs[BUDGET_ATTR] == 2
    # Raise the budget to 4 without running, as another machine's `tuner start` would.
    study.set_user_attr(BUDGET_ATTR, 4)
    worker = _invoke(["worker", "--study", "tiny", "--storage", storage_url, "--device", "cpu",
                      "--trials", "1"])
    assert len(study.trials) == 3  # one here, though the budget had room for two
    assert stored_budget(TunerStorage(storage_url, create=False).open(), "tiny") == 4
    header = worker.stderr.splitlines()[0]
    assert header.startswith("Worker on cpu · study tiny · iris / mlp · budget 4, at most "
                             "1 trial here"), header
