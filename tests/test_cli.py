"""The command line, end to end on a tiny study, read back with Optuna's own API."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from click.testing import CliRunner, Result
from optuna.trial import TrialState

from tuner.cli import cli
from tuner.storage import TunerStorage

BUILTIN = ("dropout_vs_batchnorm", "optimizers", "population", "quick",
           "regularization")


def _invoke(runner: CliRunner, args: Sequence[str], **kwargs: Any) -> Result:
    return runner.invoke(cli, list(args), **kwargs)


def _start(runner: CliRunner, space: Path | str, url: str, *extra: str) -> Result:
    return _invoke(runner, ["start", "--space", str(space), "--storage", url, "--device", "cpu",
                            "--quiet", *extra])


def _assert_clean_error(result: Result, code: int, *fragments: str) -> str:
    """Exit code, one line starting with `Error:`, no traceback, no escaped exception."""
    assert result.exit_code == code, result.output
    # CliRunner swallows uncaught exceptions: an escaped one would show up here, not as text.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _assert_usage_error(result: Result, *fragments: str) -> None:
    """click's own usage error: exit 2, one `Error:` line that points to `--help`."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    last = lines[0]
    assert last.startswith("Error: ") and last.endswith(" --help)"), last
    for fragment in fragments:
        assert fragment in last, last


def _counts(url: str) -> dict[str, int]:
    """Trials per study, through Optuna."""
    return {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage=url)}


# --- one real tiny study, shared by the read-back tests -------------------------------------


@pytest.fixture(scope="module")
def tiny_db(tmp_path_factory: pytest.TempPathFactory,
            tiny_space_template: dict[str, Any]) -> dict[str, Any]:
    """A study of the tiny space run once through `tuner start`, with its outputs."""
    root = tmp_path_factory.mktemp("cli")
    space = root / "tiny.yaml"
    space.write_text(yaml.safe_dump(dict(tiny_space_template), sort_keys=False))
    db = root / "tuner.db"
    url = f"sqlite:///{db}"
    first = _start(CliRunner(), space, url, "--trials", "3")
    return {"space": space, "db": db, "url": url, "first": first}


def _study(url: str, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def test_start_runs_the_budget_and_names_the_best_trial(tiny_db: dict[str, Any]) -> None:
    result = tiny_db["first"]
    assert result.exit_code == 0, result.output
    study = _study(tiny_db["url"])
    assert len(study.trials) == 3
    best = study.best_trial
    assert "ran 3 trials" in result.stdout
    assert "3/3 finished" in result.stdout
    assert f"Best trial #{best.number}: validation accuracy {best.value:.4f}" in result.stdout
    assert "tuner best --study tiny" in result.stdout
    # --quiet: the summary on stdout and nothing else; no warning per trial on stderr.
    assert result.stderr == ""


def test_rerun_says_nothing_to_do(runner: CliRunner, tiny_db: dict[str, Any],
                                  db_snapshot: Any) -> None:
    before = db_snapshot(tiny_db["db"])
    result = _start(runner, tiny_db["space"], tiny_db["url"], "--trials", "3")
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.stdout
    assert "already has 3 finished trials" in result.stdout
    assert f"Best trial #{_study(tiny_db['url']).best_trial.number}" in result.stdout
    assert "Raise --trials to run more" in result.stdout
    # A worker's --trials caps its own share: it cannot raise the budget, and says how.
    worker = runner.invoke(cli, ["worker", "--study", "tiny", "--storage", tiny_db["url"],
                                 "--trials", "5", "--quiet", "--device", "cpu"])
    assert worker.exit_code == 0, worker.output
    assert "nothing to do" in worker.stdout and "Raise --trials" not in worker.stdout
    assert "`tuner start` with the study's space and a larger --trials" in worker.stdout
    assert db_snapshot(tiny_db["db"]) == before


def test_studies_json_matches_optuna(runner: CliRunner, tiny_db: dict[str, Any]) -> None:
    result = _invoke(runner, ["studies", "--storage", tiny_db["url"], "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    study = _study(tiny_db["url"])
    states = [t.state for t in study.trials]
    assert len(rows) == 1
    row = rows[0]
    assert row["study"] == "tiny"
    assert row["direction"] == "maximize"
    assert row["complete"] == states.count(TrialState.COMPLETE)
    assert row["pruned"] == states.count(TrialState.PRUNED)
    assert row["failed"] == row["running"] == row["waiting"] == 0
    assert row["best_value"] == study.best_value


@pytest.mark.parametrize("fmt", ["table", "csv"])
def test_studies_table_and_csv(runner: CliRunner, tiny_db: dict[str, Any], fmt: str) -> None:
    # Wide enough for every column on one header line (the fitting is test_display's).
    result = runner.invoke(cli, ["studies", "--storage", tiny_db["url"], "--format", fmt],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].replace(",", " ").split() == ["study", "direction", "complete", "pruned",
                                                  "running", "failed", "waiting", "best_value",
                                                  "created", "last_activity"]
    assert any(line.startswith("tiny") for line in lines[1:])


def test_trials_json_matches_optuna(runner: CliRunner, tiny_db: dict[str, Any]) -> None:
    result = _invoke(runner, ["trials", "--study", "tiny", "--storage", tiny_db["url"],
                              "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    trials = _study(tiny_db["url"]).trials
    assert [r["number"] for r in rows] == [t.number for t in trials]
    for row, trial in zip(rows, trials, strict=True):
        assert row["state"] == trial.state.name.lower()
        assert row["value"] == trial.value
        assert row["duration"] == pytest.approx(trial.duration.total_seconds(), abs=1e-3)
        assert row["best_epoch"] in trial.intermediate_values
        params = {k: row[k] for k in ("lr", "optimizer", "momentum") if row.get(k) is not None}
        assert params == trial.params


def test_trials_csv_reads_back_equal_to_optuna(runner: CliRunner,
                                               tiny_db: dict[str, Any]) -> None:
    """CSV is the machine-readable format (pandas reads it): values must survive it."""
    result = _invoke(runner, ["trials", "--study", "tiny", "--storage", tiny_db["url"],
                              "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    trials = _study(tiny_db["url"]).trials
    assert [int(r["number"]) for r in rows] == [t.number for t in trials]
    for row, trial in zip(rows, trials, strict=True):
        assert row["state"] == trial.state.name.lower()
        assert float(row["value"]) == trial.value
        assert float(row["lr"]) == trial.params["lr"]
        assert row["optimizer"] == trial.params["optimizer"]
        if "momentum" in trial.params:
            assert float(row["momentum"]) == trial.params["momentum"]
        else:
            assert row["momentum"] == ""


def test_trials_csv_reads_back_with_pandas(runner: CliRunner, tiny_db: dict[str, Any]) -> None:
    pd = pytest.importorskip("pandas")
    result = _invoke(runner, ["trials", "--study", "tiny", "--storage", tiny_db["url"],
                              "--format", "csv"])
    frame = pd.read_csv(io.StringIO(result.stdout))
    reference = _study(tiny_db["url"]).trials_dataframe()
    assert list(frame["number"]) == list(reference["number"])
    assert list(frame["value"]) == pytest.approx(list(reference["value"]), rel=1e-6)


def test_trials_table(runner: CliRunner, tiny_db: dict[str, Any]) -> None:
    result = runner.invoke(cli, ["trials", "--study", "tiny", "--storage", tiny_db["url"]],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:5] == ["number", "state", "value", "duration", "best_epoch"]
    assert set(lines[1]) <= {"-", " "}
    assert len(lines) == 2 + 3
    for line, trial in zip(lines[2:], _study(tiny_db["url"]).trials, strict=True):
        number, state, value = line.split()[:3]
        assert int(number) == trial.number and state == "complete"
        assert float(value) == pytest.approx(trial.value, rel=1e-5)


def test_trials_state_filter_and_best_first(runner: CliRunner, tiny_db: dict[str, Any]) -> None:
    result = _invoke(runner, ["trials", "--study", "tiny", "--storage", tiny_db["url"],
                              "--state", "complete", "--best-first", "--limit", "2",
                              "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    complete = sorted((t for t in _study(tiny_db["url"]).trials
                       if t.state == TrialState.COMPLETE), key=lambda t: (-t.value, t.number))
    assert [r["number"] for r in rows] == [t.number for t in complete[:2]]
    pruned = _invoke(runner, ["trials", "--study", "tiny", "--storage", tiny_db["url"],
                              "--state", "pruned", "--format", "json"])
    assert json.loads(pruned.stdout) == []


def test_best_json_matches_optuna(runner: CliRunner, tiny_db: dict[str, Any]) -> None:
    result = _invoke(runner, ["best", "--study", "tiny", "--storage", tiny_db["url"],
                              "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    best = _study(tiny_db["url"]).best_trial
    assert len(rows) == 1
    row = rows[0]
    assert row["number"] == best.number
    assert row["value"] == best.value
    assert row["seed"] == best.user_attrs["seed"]
    assert row["best_epoch"] in best.intermediate_values
    assert row["test_metric"] is not None and 0.0 <= row["test_metric"] <= 1.0
    assert {k: v for k, v in row.items() if k in best.params} == best.params


def test_best_csv_and_table(runner: CliRunner, tiny_db: dict[str, Any]) -> None:
    best = _study(tiny_db["url"]).best_trial
    result = _invoke(runner, ["best", "--study", "tiny", "--storage", tiny_db["url"],
                              "--format", "csv"])
    assert result.exit_code == 0, result.output
    (row,) = list(csv.DictReader(io.StringIO(result.stdout)))
    assert int(row["number"]) == best.number
    # (exact CSV values are checked by test_trials_csv_reads_back_equal_to_optuna)
    assert float(row["value"]) == pytest.approx(best.value, rel=1e-5)
    assert int(row["seed"]) == best.user_attrs["seed"]



def test_best_alone_is_shown_as_tuner_start_ends(runner: CliRunner,
                                                 tiny_db: dict[str, Any]) -> None:
    """One trial is a headline and a line per parameter, as `tuner start`'s summary."""
    best = _study(tiny_db["url"]).best_trial
    table = _invoke(runner, ["best", "--study", "tiny", "--storage", tiny_db["url"]])
    assert table.exit_code == 0, table.output
    head, *params = table.stdout.splitlines()
    summary = tiny_db["first"].stdout.splitlines()
    at = next(i for i, line in enumerate(summary) if line.startswith("Best trial #"))
    start_head, start_params = summary[at], summary[at + 1:at + 1 + len(best.params)]
    # The same words, the seed and the duration added in the parentheses.
    assert head.startswith(start_head.rstrip(")") + ", seed ")
    assert f"seed {best.user_attrs['seed']}," in head
    assert params == start_params
    assert [line.split()[0] for line in params] == list(best.params)


def test_best_top_k_is_ordered(runner: CliRunner, tiny_db: dict[str, Any]) -> None:
    result = _invoke(runner, ["best", "--study", "tiny", "--storage", tiny_db["url"],
                              "--top", "3", "--format", "json"])
    values = [r["value"] for r in json.loads(result.stdout)]
    assert values == sorted(values, reverse=True)
    assert values[0] == _study(tiny_db["url"]).best_value


def test_read_back_commands_change_nothing(runner: CliRunner, tiny_db: dict[str, Any],
                                           db_snapshot: Any) -> None:
    before = db_snapshot(tiny_db["db"])
    for args in (["studies"], ["trials", "--study", "tiny"], ["best", "--study", "tiny"]):
        assert _invoke(runner, [*args, "--storage", tiny_db["url"]]).exit_code == 0
    assert db_snapshot(tiny_db["db"]) == before


def test_spaces_lists_the_builtin_spaces(runner: CliRunner) -> None:
    result = _invoke(runner, ["spaces"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(BUILTIN)
    assert "digits/mlp" in lines[0]


# --- options ----------------------------------------------------------------------------------


def test_storage_from_the_environment(runner: CliRunner, tiny_path: Path, db_path: Path,
                                      storage_url: str) -> None:
    result = _invoke(runner, ["start", "--space", str(tiny_path), "--trials", "1", "--device",
                              "cpu", "--quiet", "--study", "from_env"],
                     env={"TUNER_STORAGE": storage_url})
    assert result.exit_code == 0, result.output
    assert db_path.exists()
    assert _counts(storage_url) == {"from_env": 1}


def test_default_storage_is_relative_to_the_working_directory(runner: CliRunner,
                                                              tiny_path: Path,
                                                              tmp_path: Path) -> None:
    result = _invoke(runner, ["start", "--space", str(tiny_path), "--trials", "1", "--device",
                              "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    db = tmp_path / "storage" / "tuner.db"
    assert db.exists()
    assert _counts(f"sqlite:///{db}") == {"tiny": 1}


def test_overrides_are_recorded_and_resume_needs_the_same(runner: CliRunner, tiny_path: Path,
                                                          storage_url: str) -> None:
    args = ("--trials", "1", "--epochs", "3", "--dataset", "wine", "--seed", "4",
            "--study", "custom")
    assert _start(runner, tiny_path, storage_url, *args).exit_code == 0
    study = _study(storage_url, "custom")
    (trial,) = study.trials
    assert len(trial.intermediate_values) == 3
    stored = json.loads(study.user_attrs["tuner:space"])
    assert (stored["task"]["epochs"], stored["task"]["dataset"], stored["seed"]) == (3, "wine", 4)
    # Resuming with the same options continues; with other ones it is refused.
    again = _start(runner, tiny_path, storage_url, *args[:-2], "--study", "custom",
                   "--trials", "2")
    assert again.exit_code == 0, again.output
    assert len(_study(storage_url, "custom").trials) == 2
    other = _start(runner, tiny_path, storage_url, "--trials", "3", "--study", "custom")
    _assert_clean_error(other, 2, "'custom'", "different search space")
    assert len(_study(storage_url, "custom").trials) == 2


def test_builtin_space_by_name(runner: CliRunner, storage_url: str) -> None:
    result = _start(runner, "quick", storage_url, "--trials", "1", "--epochs", "1",
                    "--dataset", "iris")
    assert result.exit_code == 0, result.output
    assert _counts(storage_url) == {"quick": 1}


# --- bad input ------------------------------------------------------------------------------

BAD_SPACES: list[tuple[str, str, tuple[str, ...]]] = [
    ("malformed YAML", "task: {dataset: iris\nparams:\n  lr: 0.1\n",
     ("malformed YAML", "line ")),
    ("unknown key", "task: {dataset: iris}\nepochz: 3\n", ("epochz", "unknown key")),
    ("duplicate key", "task: {dataset: iris}\nparams:\n  lr: {low: 0.001, high: 0.01}\n"
     "  lr: 0.1\n", ("line 4, column 3", "duplicate key 'lr'")),
    ("step that does not divide the range",
     "task: {dataset: iris}\nparams:\n  dropout: {low: 0.0, high: 0.5, step: 0.3}\n",
     ("params.dropout", "`step` must divide `high - low`", "the last value would be 0.3")),
    ("int step that does not divide the range",
     "task: {dataset: iris}\nparams:\n  hidden: {low: 8, high: 30, step: 8}\n",
     ("params.hidden", "`step` must divide", "the last value would be 24")),
    ("hyperband with min_resource > max_resource",
     "task: {dataset: iris}\npruner: {name: hyperband, min_resource: 5, max_resource: 2}\n",
     ("pruner", "`min_resource <= max_resource`", "min_resource=5, max_resource=2")),
    ("hyperband with min_resource above the epochs",
     "task: {dataset: iris, epochs: 3}\npruner: {name: hyperband, min_resource: 5}\n",
     ("min_resource=5, max_resource=3, the task's epochs by default",)),
    ("duplicate key, flow style", "task: {dataset: iris, epochs: 2, epochs: 3}\n",
     ("line 1", "duplicate key 'epochs'")),
    ("low > high", "task: {dataset: iris}\nparams:\n  l2: {low: 1.0, high: 0.1}\n",
     ("params.l2", "`low <= high`", "low=1.0, high=0.1")),
    ("unknown optimizer", "task: {dataset: iris}\nparams:\n  optimizer: {choices: [adam, lion]}\n",
     ("params.optimizer.choices", "'lion'")),
    ("unknown schedule", "task: {dataset: iris}\nparams:\n  schedule: cyclic\n",
     ("params.schedule", "'cyclic'")),
    ("unknown pruner", "task: {dataset: iris}\npruner: {name: early}\n",
     ("pruner.name", "unknown pruner", "'early'")),
    ("unknown dataset", "task: {dataset: mnist}\n", ("task.dataset", "'mnist'")),
    ("conditional under the wrong optimizer",
     "task: {dataset: iris}\nparams:\n  optimizer:\n    choices:\n      adam: {momentum: 0.9}\n",
     ("params.optimizer.choices.adam.momentum",)),
]


@pytest.mark.parametrize(("label", "text", "fragments"), BAD_SPACES,
                         ids=[case[0] for case in BAD_SPACES])
def test_bad_space_fails_cleanly_before_the_database(runner: CliRunner, write_space: Any,
                                                     storage_url: str, db_path: Path,
                                                     label: str, text: str,
                                                     fragments: tuple[str, ...]) -> None:
    path = write_space(text, name="bad")
    result = _start(runner, path, storage_url, "--trials", "2")
    line = _assert_clean_error(result, 2, "bad.yaml", *fragments)
    assert str(path) in line
    assert not db_path.exists() and not db_path.parent.exists()


def test_unknown_space_name(runner: CliRunner, storage_url: str, db_path: Path) -> None:
    _assert_clean_error(_start(runner, "nonexistent", storage_url), 2, "'nonexistent'",
                        "quick")
    assert not db_path.parent.exists()


@pytest.mark.parametrize(("args", "fragments"), [
    (["--trials", "0"], ("--trials", "0")),
    (["--trials", "-3"], ("--trials",)),
    (["--dataset", "mnist"], ("--dataset", "mnist")),
    (["--epochs", "0"], ("--epochs",)),
    (["--timeout", "0"], ("--timeout",)),
], ids=["trials 0", "trials negative", "unknown dataset option", "epochs 0", "timeout 0"])
def test_bad_option_is_a_usage_error_before_the_database(runner: CliRunner, tiny_path: Path,
                                                         storage_url: str, db_path: Path,
                                                         args: list[str],
                                                         fragments: tuple[str, ...]) -> None:
    _assert_usage_error(_start(runner, tiny_path, storage_url, *args), *fragments)
    assert not db_path.parent.exists()


def test_bad_device(runner: CliRunner, tiny_path: Path, storage_url: str,
                    db_path: Path) -> None:
    result = _invoke(runner, ["start", "--space", str(tiny_path), "--storage", storage_url,
                              "--device", "tpu", "--quiet"])
    _assert_clean_error(result, 2, "--device", "'tpu'")
    assert not db_path.parent.exists()


def test_unwritable_storage_path(runner: CliRunner, tiny_path: Path) -> None:
    result = _start(runner, tiny_path, "sqlite:////proc/tuner-test/tuner.db", "--trials", "1")
    _assert_clean_error(result, 1, "/proc/tuner-test")
    assert not Path("/proc/tuner-test").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root can write into a read-only directory")
def test_read_only_storage_directory(runner: CliRunner, tiny_path: Path,
                                     tmp_path: Path) -> None:
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        result = _start(runner, tiny_path, f"sqlite:///{folder}/tuner.db", "--trials", "1")
        _assert_clean_error(result, 1, str(folder))
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_not_a_database_url(runner: CliRunner, tiny_path: Path) -> None:
    _assert_clean_error(_start(runner, tiny_path, "not a url", "--trials", "1"), 2,
                        "--storage", "not a database URL")


def test_unreachable_postgres_fails_fast(runner: CliRunner, tiny_path: Path) -> None:
    began = time.monotonic()
    result = _start(runner, tiny_path, "postgresql://postgres@127.0.0.1:1/none", "--trials", "1")
    elapsed = time.monotonic() - began
    _assert_clean_error(result, 1, "cannot open the study database", "127.0.0.1")
    assert elapsed < 15


def test_resuming_with_a_different_space_changes_nothing(runner: CliRunner, tiny_path: Path,
                                                         tiny_space: dict[str, Any],
                                                         write_space: Any, storage_url: str,
                                                         db_path: Path,
                                                         db_snapshot: Any) -> None:
    assert _start(runner, tiny_path, storage_url, "--trials", "2").exit_code == 0
    before = db_snapshot(db_path)
    tiny_space["params"]["hidden"] = 32
    other = write_space(tiny_space, name="other")
    result = _start(runner, other, storage_url, "--trials", "4", "--study", "tiny")
    _assert_clean_error(result, 2, "'tiny'", "different search space")
    assert db_snapshot(db_path) == before
    assert _counts(storage_url) == {"tiny": 2}


@pytest.mark.parametrize("command", ["trials", "best"])
def test_unknown_study_lists_the_existing_ones(runner: CliRunner, command: str,
                                               storage_url: str, db_path: Path,
                                               db_snapshot: Any) -> None:
    storage = TunerStorage(storage_url).open()  # a tuner database: Optuna's and tuner's tables
    optuna.create_study(study_name="alpha", storage=storage.optuna)
    optuna.create_study(study_name="beta", storage=storage.optuna)
    storage.engine.dispose()
    before = db_snapshot(db_path)
    result = _invoke(runner, [command, "--study", "gamma", "--storage", storage_url])
    _assert_clean_error(result, 2, "'gamma'", "alpha, beta")
    assert db_snapshot(db_path) == before


@pytest.mark.parametrize("args", [["studies"], ["trials", "--study", "x"],
                                  ["best", "--study", "x"]])
def test_reading_a_missing_database_creates_nothing(runner: CliRunner, storage_url: str,
                                                    db_path: Path, args: list[str]) -> None:
    result = _invoke(runner, [*args, "--storage", storage_url])
    _assert_clean_error(result, 1, "no study database", str(db_path))
    assert not db_path.exists() and not db_path.parent.exists()


def test_best_of_a_study_without_complete_trials(runner: CliRunner, storage_url: str,
                                                 db_path: Path) -> None:
    db_path.parent.mkdir()
    optuna.create_study(study_name="empty", storage=storage_url)
    result = _invoke(runner, ["best", "--study", "empty", "--storage", storage_url])
    _assert_clean_error(result, 1, "'empty'", "no complete trial")


# Spaces the loader accepts must not crash `tuner start` with a traceback later on.
ACCEPTED_BUT_BROKEN = [
    ("tpe without multivariate, with conditionals",
     "task: {dataset: iris, epochs: 1}\nsampler: {name: tpe, multivariate: false}\n"
     "params:\n  hidden: 16\n  optimizer: {choices: [adam, sgd]}\n"),
    ("log range in one branch, linear in another",
     "task: {dataset: iris, epochs: 1}\nsampler: {name: random, seed: 0}\n"
     "params:\n  hidden: 16\n  optimizer:\n    choices:\n"
     "      sgd: {lr: {low: 0.01, high: 0.5}}\n"
     "      adam: {lr: {low: 0.0001, high: 0.01, log: true}}\n"),
]


@pytest.mark.parametrize(("label", "text"), ACCEPTED_BUT_BROKEN,
                         ids=[case[0] for case in ACCEPTED_BUT_BROKEN])
def test_start_never_ends_in_a_traceback(runner: CliRunner, write_space: Any, storage_url: str,
                                         label: str, text: str) -> None:
    result = _start(runner, write_space(text, name="edge"), storage_url, "--trials", "6")
    if result.exit_code == 0:
        return
    _assert_clean_error(result, 2)


# --- the real console script, in its own process ----------------------------------------------


def _tuner_script() -> list[str]:
    script = Path(sys.executable).parent / "tuner"
    if not script.exists():
        pytest.skip("the `tuner` console script is not installed next to this Python")
    return [str(script)]


@pytest.mark.slow
def test_console_script_output_is_clean(tiny_path: Path, storage_url: str, write_space: Any,
                                        db_path: Path) -> None:
    """What a user sees: --quiet prints the summary and nothing on stderr (no warning per
    trial); a bad file prints one `Error:` line and no traceback."""
    env = {k: v for k, v in os.environ.items() if k not in ("TUNER_STORAGE", "TUNER_DEVICE")}
    ok = subprocess.run([*_tuner_script(), "start", "--space", str(tiny_path), "--storage",
                         storage_url, "--trials", "2", "--device", "cpu", "--quiet"],
                        capture_output=True, text=True, env=env, timeout=120, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "Best trial #" in ok.stdout
    assert ok.stderr == ""

    bad = write_space("task: {dataset: iris}\nparams:\n  l2: {low: 1.0, high: 0.1}\n", "bad")
    other = db_path.parent / "other.db"
    failed = subprocess.run([*_tuner_script(), "start", "--space", str(bad), "--storage",
                             f"sqlite:///{other}", "--quiet"],
                            capture_output=True, text=True, env=env, timeout=120, check=False)
    assert failed.returncode == 2
    assert failed.stdout == ""
    assert "Traceback" not in failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), failed.stderr
    assert "params.l2" in lines[0]
    assert not other.exists()


@pytest.mark.parametrize(("name", "rule"), [
    ("", "a study name must not be blank"),
    ("   ", "a study name must not be blank"),
    ("a\nb", "must be printable (no newlines, tabs or control characters), but got 'a\\nb'"),
    ("bell\x07", "must be printable"),
    ("x" * 100_000, "a study name is at most 200 characters, but got 100,000"),
])
def test_a_study_name_that_would_garble_listings_is_refused(
        runner: CliRunner, tiny_path: Path, storage_url: str, db_path: Path, name: str,
        rule: str) -> None:
    result = runner.invoke(cli, ["start", "--space", str(tiny_path), "--study", name,
                                 "--storage", storage_url, "--trials", "1", "--quiet"])
    _assert_usage_error(result, "Invalid value for '--study'", rule)
    assert len(result.stderr.strip().splitlines()[-1]) < 200
    assert not db_path.exists()
