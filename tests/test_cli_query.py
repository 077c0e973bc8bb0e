"""`tuner trials --where/--sort/--columns`, `tuner curves`, every format, and bad input,
end to end through the CLI, checked against Optuna's own API on the same database."""

from __future__ import annotations

import csv
import io
import json
import shutil
import socket
import sqlite3
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
import torch
from click.testing import CliRunner, Result
from optuna.trial import TrialState

from tuner.cli import cli
from tuner.runner import run_study
from tuner.space import parse_space
from tuner.storage import TunerStorage

FORMATS = ("table", "csv", "json")


def _invoke(args: Sequence[str]) -> Result:
    return CliRunner().invoke(cli, list(args))


def _clean_error(result: Result, code: int, *fragments: str) -> str:
    """Exit code, one `Error:` line on stderr, no traceback."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: "), result.stderr
    if not result.stderr.startswith("Usage: "):
        assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


def _rows(result: Result, fmt: str) -> list[dict[str, Any]]:
    """Parse any format back into rows of strings (json: of values)."""
    assert result.exit_code == 0, result.output
    if fmt == "json":
        return json.loads(result.stdout)  # type: ignore[no-any-return]
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(result.stdout)))
    header, rule, *lines = result.stdout.splitlines()
    starts = [i for i, c in enumerate(rule) if c == "-" and (i == 0 or rule[i - 1] == " ")]
    names = header.split()
    bounds = [*starts[1:], None]
    return [{n: line[s:e].strip() for n, s, e in zip(names, starts, bounds, strict=True)}
            for line in lines]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory, tiny_space_template: Any) -> dict[str, Any]:
    """A real tuner study ("tiny", tuner tables filled) and an ask/tell one ("syn")."""
    path = tmp_path_factory.mktemp("cli-query") / "tuner.db"
    url = f"sqlite:///{path}"
    storage = TunerStorage(url, heartbeat=False).open()
    space = parse_space(dict(tiny_space_template), name="tiny", source="tiny")
    run_study(space, storage=storage, study_name="tiny", budget=3, device=torch.device("cpu"))
    syn = optuna.create_study(study_name="syn", storage=storage.optuna, direction="minimize",
                              sampler=optuna.samplers.RandomSampler(seed=1))
    for i in range(40):
        trial = syn.ask()
        dropout = trial.suggest_float("dropout", 0.0, 0.5)
        trial.suggest_float("l2", 1e-6, 1e-2, log=True)
        opt = trial.suggest_categorical("optimizer", ["adam", "sgd", "momentum"])
        trial.suggest_categorical("batchnorm", [False, True])
        if opt == "momentum":
            trial.suggest_float("momentum", 0.5, 0.99)
        for step in (1, 2, 3):
            trial.report(dropout + 1.0 / step, step)
        if i % 6 == 5:
            syn.tell(trial, state=TrialState.PRUNED)
        else:
            syn.tell(trial, dropout + i / 1000)
    storage.engine.dispose()
    return {"url": url, "path": path}


def test_where_compares_an_integer_past_64_bits_as_a_number(db: dict[str, Any]) -> None:
    count = len(_trials(db["url"], "syn"))
    huge = "1" + "0" * 5000  # past Python's own limit for int("...")
    for where, n in ((f"number < {10 ** 23}", count), (f"number > {10 ** 23}", 0),
                     (f"number > -{10 ** 23}", count), (f"number < {huge}", count)):
        result = _invoke(["trials", "--study", "syn", "--storage", db["url"], "--format",
                          "json", "--where", where])
        assert result.exit_code == 0, result.output
        assert len(json.loads(result.output)) == n


def test_a_multi_objective_study_is_shown_with_every_direction(tmp_path: Path,
                                                                db_snapshot: Any) -> None:
    path = tmp_path / "multi.db"
    url = f"sqlite:///{path}"
    multi = optuna.create_study(study_name="multi", storage=url,
                                directions=["minimize", "maximize"])
    for i in range(4):
        trial = multi.ask()
        x = trial.suggest_float("x", 0, 1)
        multi.tell(trial, [x + i, x - i])
    result = _invoke(["studies", "--storage", url, "--format", "json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["direction"] == "minimize,maximize" and row["best_value"] is None
    assert row["complete"] == 4
    before = db_snapshot(path)
    _clean_error(_invoke(["best", "--study", "multi", "--storage", url]), 1,
                 "has 2 objectives (minimize, maximize)", "no trial is best by one value")
    assert db_snapshot(path) == before


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


# --- trials --where / --sort / --columns, every format -----------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_where_sort_limit_columns(db: dict[str, Any], fmt: str) -> None:
    result = _invoke(["trials", "--study", "syn", "--storage", db["url"], "--format", fmt,
                      "--where", "optimizer == 'adam' and dropout > 0.2 or batchnorm == true",
                      "--sort", "-dropout", "--limit", "7",
                      "--columns", "number,value,dropout,optimizer"])
    rows = _rows(result, fmt)
    expected = sorted((t for t in _trials(db["url"], "syn")
                       if (t.params["optimizer"] == "adam" and t.params["dropout"] > 0.2)
                       or t.params["batchnorm"]), key=lambda t: -t.params["dropout"])[:7]
    assert len(expected) == 7
    assert [list(r) for r in rows] == [["number", "value", "dropout", "optimizer"]] * 7
    for row, trial in zip(rows, expected, strict=True):
        assert int(row["number"]) == trial.number
        assert row["optimizer"] == trial.params["optimizer"]
        if fmt == "table":
            assert float(row["dropout"]) == pytest.approx(trial.params["dropout"], rel=1e-5)
        else:  # json and csv are exact
            assert float(row["dropout"]) == trial.params["dropout"]
            assert (float(row["value"]) if row["value"] not in ("", None) else None) == (
                trial.value)


def test_csv_reads_back_with_pandas_as_optuna_has_it(db: dict[str, Any]) -> None:
    result = _invoke(["trials", "--study", "syn", "--storage", db["url"], "--format", "csv"])
    frame = pd.read_csv(io.StringIO(result.stdout))
    reference = optuna.load_study(study_name="syn", storage=db["url"]).trials_dataframe()
    assert list(frame["number"]) == list(reference["number"])
    assert list(frame["state"].str.upper()) == list(reference["state"])
    for name in ("dropout", "l2", "momentum"):
        pd.testing.assert_series_equal(frame[name], reference[f"params_{name}"],
                                       check_names=False)
    assert list(frame["optimizer"]) == list(reference["params_optimizer"])
    assert list(frame["batchnorm"]) == list(reference["params_batchnorm"])


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
def test_json_is_read_by_jq(db: dict[str, Any]) -> None:
    result = _invoke(["best", "--study", "syn", "--storage", db["url"], "--top", "3",
                      "--format", "json"])
    out = subprocess.run(["jq", "-c", "[.[] | .number]"], input=result.stdout,
                         capture_output=True, text=True, check=True).stdout
    best = sorted((t for t in _trials(db["url"], "syn") if t.state == TrialState.COMPLETE),
                  key=lambda t: t.value)[:3]
    assert json.loads(out) == [t.number for t in best]


@pytest.mark.parametrize("fmt", FORMATS)
def test_best_top_k_against_optuna(db: dict[str, Any], fmt: str) -> None:
    rows = _rows(_invoke(["best", "--study", "syn", "--storage", db["url"], "--top", "4",
                          "--format", fmt]), fmt)
    study = optuna.load_study(study_name="syn", storage=db["url"])
    best = sorted((t for t in study.trials if t.state == TrialState.COMPLETE),
                  key=lambda t: t.value)[:4]
    assert [int(r["number"]) for r in rows] == [t.number for t in best]
    assert int(rows[0]["number"]) == study.best_trial.number
    assert rows[0]["optimizer"] == study.best_trial.params["optimizer"]


# --- curves ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_curves_of_tuner_trials_against_optuna(db: dict[str, Any], fmt: str) -> None:
    rows = _rows(_invoke(["curves", "--study", "tiny", "--storage", db["url"], "--trial", "2",
                          "--trial", "0", "--format", fmt]), fmt)
    trials = {t.number: t for t in _trials(db["url"], "tiny")}
    assert [int(r["trial"]) for r in rows] == [2, 2, 0, 0]
    for row in rows:
        reported = trials[int(row["trial"])].intermediate_values[int(row["epoch"])]
        assert float(row["val_metric"]) == pytest.approx(reported, rel=1e-5)
        assert float(row["train_loss"]) > 0 and float(row["lr"]) > 0


def test_curves_of_an_optuna_trial_are_its_intermediate_values(db: dict[str, Any]) -> None:
    rows = _rows(_invoke(["curves", "--study", "syn", "--storage", db["url"], "--trial", "5",
                          "--format", "json"]), "json")
    trial = _trials(db["url"], "syn")[5]
    assert {r["epoch"]: r["val_metric"] for r in rows} == trial.intermediate_values
    assert all(r["train_loss"] is None for r in rows)


def test_studies_in_every_format(db: dict[str, Any]) -> None:
    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(db["url"])}
    for fmt in FORMATS:
        rows = _rows(_invoke(["studies", "--storage", db["url"], "--format", fmt]), fmt)
        assert [r["study"] for r in rows] == ["tiny", "syn"]
        for row in rows:
            summary = summaries[row["study"]]
            total = sum(int(row[k]) for k in ("complete", "pruned", "running", "failed",
                                              "waiting"))
            assert total == summary.n_trials
            assert float(row["best_value"]) == pytest.approx(summary.best_trial.value, rel=1e-5)


# --- bad input: one line, an exit code, nothing changed ------------------------------------------


@pytest.mark.parametrize(("args", "code", "fragments"), [
    (["trials", "--study", "nope"], 2, ("no study 'nope'", "tiny, syn")),
    (["curves", "--study", "nope", "--trial", "0"], 2, ("no study 'nope'", "tiny, syn")),
    (["report", "--study", "nope"], 2, ("no study 'nope'", "tiny, syn")),
    (["trials", "--study", "syn", "--format", "xml"], 2, ("'xml' is not one of",)),
    (["studies", "--format", "yaml"], 2, ("'yaml' is not one of",)),
    (["trials", "--study", "syn", "--where", "dropout >> 1"], 2, ("at position 10",)),
    (["trials", "--study", "syn", "--where", "1=1; drop table trials"], 2,
     ("unexpected '='", "at position 2")),
    (["trials", "--study", "syn", "--where", "optimizer == 'adam'; drop table trials"], 2,
     ("unexpected ';'",)),
    (["trials", "--study", "syn", "--where", "optimizer == 'x'' or 1 == 1"], 2, ("position",)),
    (["trials", "--study", "syn", "--where", "dropuot > 0.1"], 2,
     ("unknown column 'dropuot'", "dropout")),
    (["trials", "--study", "syn", "--sort", "zzz"], 2, ("--sort 'zzz'", "unknown column")),
    (["trials", "--study", "syn", "--columns", "number,zzz"], 2, ("--columns", "'zzz'")),
    (["curves", "--study", "syn", "--trial", "99"], 2, ("no trial 99", "0..39")),
    # Past what a database integer holds: refused by range, not by the driver.
    (["curves", "--study", "syn", "--trial", str(2 ** 63)], 2, ("'--trial'", "range")),
    (["rerun", "--study", "syn", "--trial", str(10 ** 23)], 2, ("'--trial'", "range")),
    (["export", "--study", "syn", "--trial", str(10 ** 23), "--out", "m.pt"], 2,
     ("'--trial'", "range")),
    (["trials", "--study", "syn", "--limit", str(10 ** 23)], 2, ("'--limit'", "range")),
    (["best", "--study", "syn", "--top", str(10 ** 23)], 2, ("'--top'", "range")),
])
def test_bad_input(db: dict[str, Any], db_snapshot: Any, args: list[str], code: int,
                   fragments: tuple[str, ...]) -> None:
    before = db_snapshot(db["path"])
    _clean_error(_invoke([*args, "--storage", db["url"]]), code, *fragments)
    assert db_snapshot(db["path"]) == before


@pytest.mark.parametrize("command", [["studies"], ["trials", "--study", "x"],
                                     ["best", "--study", "x"], ["curves", "--study", "x",
                                                                 "--trial", "1"],
                                     ["report", "--study", "x"], ["dashboard"]])
def test_a_database_that_is_not_an_optuna_one(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.close()
    before = path.read_bytes()
    _clean_error(_invoke([*command, "--storage", f"sqlite:///{path}"]), 1,
                 "not an Optuna study database")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_dashboard_on_a_port_in_use(db: dict[str, Any], db_snapshot: Any) -> None:
    before = db_snapshot(db["path"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _invoke(["dashboard", "--storage", db["url"], "--port", str(port)])
    _clean_error(result, 1, f"port {port}", "already in use", "--port")
    assert db_snapshot(db["path"]) == before


def test_dashboard_port_out_of_range(db: dict[str, Any]) -> None:
    _clean_error(_invoke(["dashboard", "--storage", db["url"], "--port", "70000"]), 2,
                 "--port")
