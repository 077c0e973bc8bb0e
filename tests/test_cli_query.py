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
from table_reader import read_table

from tuner.cli import cli
from tuner.run.runner import run_study
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


def _rows(result: Result, fmt: str, text: str | None = None) -> list[dict[str, Any]]:
    """Parse any format back into rows of strings (json: of values); ``text``: this part
    of the output instead of all of it."""
    assert result.exit_code == 0, result.output
    text = result.stdout if text is None else text
    if fmt == "json":
        return json.loads(text)  # type: ignore[no-any-return]
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(text)))
    _, rows, same = read_table(text)
    return [{**same, **row} for row in rows]  # what is the same in all is in every row


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
    _clean_error(_invoke(["curves", "--study", "multi", "--storage", url]), 1,
                 "has 2 objectives", "give --trial N")
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


# --- tables that fit, and show what differs -----------------------------------------------------

LONG = "a_rather_long_regularization_knob"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An ask/tell study with parameters fixed in every trial (`width`, `kind`), a
    conditional one (`momentum`) and one of a long name."""
    path = tmp_path_factory.mktemp("mixed") / "mixed.db"
    url = f"sqlite:///{path}"
    study = optuna.create_study(study_name="mixed", storage=url, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=2))
    for i in range(12):
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        trial.suggest_int("width", 64, 64)
        trial.suggest_categorical("kind", ["bernoulli"])
        if trial.suggest_categorical("optimizer", ["adam", "momentum"]) == "momentum":
            trial.suggest_float("momentum", 0.5, 0.99)
        trial.suggest_float(LONG, 0.0, 1.0)
        for j in range(6):
            trial.suggest_float(f"extra_{j}", 0.0, 1.0)
        study.tell(trial, 1.0 - lr * i)
    return {"url": url, "trials": study.trials}


def _differ(trials: Sequence[optuna.trial.FrozenTrial]) -> tuple[set[str], dict[str, Any]]:
    """Which parameters differ between trials (one lacking it counts), by Optuna's API."""
    names = {n for t in trials for n in t.params}
    same = {n: trials[0].params[n] for n in names
            if all(n in t.params for t in trials)
            and len({repr(t.params[n]) for t in trials}) == 1}
    return names - set(same), same


@pytest.mark.parametrize("width", [60, 100, 140])
def test_trials_table_fits_and_shows_what_differs(mixed: dict[str, Any], width: int) -> None:
    result = CliRunner().invoke(cli, ["trials", "--study", "mixed", "--storage", mixed["url"]],
                                env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= width
    columns, rows, same = read_table(result.stdout)
    trials = mixed["trials"]
    differ, fixed = _differ(trials)
    assert set(columns) == {"number", "state", "value", "duration", *differ}
    assert "best_epoch" not in columns  # empty in every row: a plain Optuna study
    assert same == {name: str(value) for name, value in fixed.items()} == {
        "width": "64", "kind": "bernoulli"}
    assert [int(r["number"]) for r in rows] == [t.number for t in trials]
    for row, trial in zip(rows, trials, strict=True):
        assert float(row["value"]) == pytest.approx(trial.value, rel=1e-5)
        for name in differ:
            if name in trial.params and name != "optimizer":
                assert float(row[name]) == pytest.approx(trial.params[name], rel=1e-5)
            else:
                assert row[name] == trial.params.get(name, "")


def test_a_table_not_on_a_terminal_is_120_wide(mixed: dict[str, Any]) -> None:
    result = CliRunner().invoke(cli, ["trials", "--study", "mixed", "--storage", mixed["url"]],
                                env={"COLUMNS": None})
    wide = CliRunner().invoke(cli, ["trials", "--study", "mixed", "--storage", mixed["url"]],
                              env={"COLUMNS": "1000"})
    assert max(map(len, result.stdout.splitlines())) <= 120
    assert max(map(len, wide.stdout.splitlines())) > 120  # it had to be fitted
    assert read_table(result.stdout) == read_table(wide.stdout)  # the same cells


def test_all_params_columns_and_machine_formats_keep_every_column(mixed: dict[str, Any]
                                                                   ) -> None:
    args = ["trials", "--study", "mixed", "--storage", mixed["url"]]
    names = {n for t in mixed["trials"] for n in t.params}
    columns, _, same = read_table(_invoke([*args, "--all-params"]).stdout)
    assert names <= set(columns) and same == {}
    columns, rows, same = read_table(_invoke([*args, "--columns", "number,kind,lr"]).stdout)
    assert columns == ["number", "kind", "lr"] and same == {}
    assert {r["kind"] for r in rows} == {"bernoulli"}
    for fmt in ("json", "csv"):
        out = _rows(_invoke([*args, "--format", fmt]), fmt)
        assert set(out[0]) == {"number", "state", "value", "duration", "best_epoch", *names}
    top = _rows(_invoke(["best", "--study", "mixed", "--storage", mixed["url"], "--top", "3",
                         "--format", "json"]), "json")
    assert {"width", "kind", "test_metric", "seed"} <= set(top[0])


def test_best_top_k_table_names_what_is_the_same(mixed: dict[str, Any]) -> None:
    result = CliRunner().invoke(cli, ["best", "--study", "mixed", "--storage", mixed["url"],
                                      "--top", "3"], env={"COLUMNS": "80"})
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    columns, rows, same = read_table(result.stdout)
    best = sorted(mixed["trials"], key=lambda t: -t.value)[:3]
    assert [int(r["number"]) for r in rows] == [t.number for t in best]
    differ, fixed = _differ(best)
    assert set(columns) == {"number", "value", *differ}
    assert same == {name: f"{v:.4g}" if isinstance(v, float) else str(v)
                    for name, v in fixed.items()}


def test_one_trial_is_shown_as_a_list(mixed: dict[str, Any]) -> None:
    trial = mixed["trials"][5]
    result = _invoke(["trials", "--study", "mixed", "--storage", mixed["url"], "--where",
                      "number == 5"])
    head, *lines = result.stdout.splitlines()
    assert head.startswith(f"Trial #5 (complete): value {trial.value:.4f} (")
    assert {line.split()[0]: line.split()[1] for line in lines} == {
        k: f"{v:.4g}" if isinstance(v, float) else str(v) for k, v in trial.params.items()}


# --- JSON: the stored doubles, exactly ------------------------------------------------------------


def _sqlite(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_json_is_the_stored_double_and_accuracy_an_exact_fraction(db: dict[str, Any]) -> None:
    stored = dict(_sqlite(db["path"], """
        SELECT t.number, v.value FROM trials t JOIN studies s USING (study_id)
        JOIN trial_values v USING (trial_id) WHERE s.study_name = 'tiny'"""))
    tests = dict(_sqlite(db["path"], """
        SELECT t.number, i.test_metric FROM trials t JOIN studies s USING (study_id)
        JOIN tuner_trials i USING (trial_id) WHERE s.study_name = 'tiny'"""))
    params = _sqlite(db["path"], """
        SELECT t.number, p.param_name, p.param_value FROM trials t
        JOIN studies s USING (study_id) JOIN trial_params p USING (trial_id)
        WHERE s.study_name = 'tiny' AND p.param_name = 'lr'""")
    rows = _rows(_invoke(["trials", "--study", "tiny", "--storage", db["url"], "--format",
                          "json"]), "json")
    assert {r["number"]: r["value"] for r in rows} == stored
    assert {r["number"]: r["lr"] for r in rows} == {n: v for n, _, v in params}
    best = _rows(_invoke(["best", "--study", "tiny", "--storage", db["url"], "--format",
                          "json"]), "json")[0]
    assert best["test_metric"] == tests[best["number"]]
    epochs = dict(_sqlite(db["path"], f"""
        SELECT e.epoch, e.val_metric FROM tuner_epochs e JOIN trials t USING (trial_id)
        JOIN studies s USING (study_id)
        WHERE s.study_name = 'tiny' AND t.number = {best['number']}"""))
    curve = _rows(_invoke(["curves", "--study", "tiny", "--storage", db["url"], "--trial",
                           str(best["number"]), "--format", "json"]), "json")
    assert {r["epoch"]: r["val_metric"] for r in curve} == epochs
    # Accuracy is hits / n (iris: n <= 150), not a float32's approximation of it.
    for value in [*stored.values(), best["test_metric"], *epochs.values()]:
        assert any(round(value * n) / n == value for n in range(1, 151)), value


# --- curves: the best trial by default ------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_curves_default_to_the_best_trial(db: dict[str, Any], fmt: str) -> None:
    best = optuna.load_study(study_name="tiny", storage=db["url"]).best_trial
    result = _invoke(["curves", "--study", "tiny", "--storage", db["url"], "--format", fmt])
    note = f"No --trial given: the best trial, #{best.number} (validation accuracy "
    text = result.stdout
    if fmt == "table":
        first, text = text.split("\n", 1)
        assert first.startswith(note)
    else:
        assert result.stderr.startswith(note)  # stdout stays data
    explicit = _invoke(["curves", "--study", "tiny", "--storage", db["url"], "--format", fmt,
                        "--trial", str(best.number)])
    rows = _rows(result, fmt, text)
    assert rows == _rows(explicit, fmt)
    assert {int(r["trial"]) for r in rows} == {best.number}


def test_curves_help_says_the_default() -> None:
    text = " ".join(_invoke(["curves", "--help"]).stdout.split())
    assert "Default: the study's best trial." in text


def test_curves_without_a_complete_trial_needs_a_trial(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    study = optuna.create_study(study_name="empty", storage=url)
    study.ask()  # running, never complete
    _clean_error(_invoke(["curves", "--study", "empty", "--storage", url]), 1,
                 "no complete trial", "give --trial N")
