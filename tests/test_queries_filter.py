"""The --where language: the parser (tuner/queries/_filter.py) and its SQL (_compile.py).

Filters are checked against Optuna's own trials, evaluated in Python: the SQL must
select exactly the trials the filter describes, and nothing a filter says may reach
the database as SQL.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from tuner import queries
from tuner.queries._filter import And, Compare, FilterError, In, Not, Or, names, parse, tokenize
from tuner.storage import TunerStorage

# --- the parser -------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "tree"), [
    ("a == 1", Compare("a", "==", 1, 1)),
    ("a != 'x'", Compare("a", "!=", "x", 1)),
    ('a <= "x y"', Compare("a", "<=", "x y", 1)),
    ("a > -2.5e-3", Compare("a", ">", -2.5e-3, 1)),
    ("a >= .5", Compare("a", ">=", 0.5, 1)),
    ("a < 3", Compare("a", "<", 3, 1)),
    ("0.3 < dropout", Compare("dropout", ">", 0.3, 7)),
    ("bn == true", Compare("bn", "==", True, 1)),
    ("bn == FALSE", Compare("bn", "==", False, 1)),
    ("m == null", Compare("m", "==", None, 1)),
    ("a in (1, 'x', 2.5)", In("a", (1, "x", 2.5), False, 1)),
    ("a not in ('x')", In("a", ("x",), True, 1)),
    ("a == 1 and b == 2 or c == 3",
     Or((And((Compare("a", "==", 1, 1), Compare("b", "==", 2, 12))), Compare("c", "==", 3, 22)))),
    ("a == 1 and (b == 2 or c == 3)",
     And((Compare("a", "==", 1, 1), Or((Compare("b", "==", 2, 13), Compare("c", "==", 3, 23)))))),
    ("not a == 1", Not(Compare("a", "==", 1, 5))),
    ("NOT (a == 1) AND b == 2", And((Not(Compare("a", "==", 1, 6)), Compare("b", "==", 2, 18)))),
])
def test_parse(source: str, tree: Any) -> None:
    assert parse(source) == tree


def test_integers_stay_integers() -> None:
    (number,) = [t for t in tokenize("a == 12") if t.kind == "number"]
    assert number.value == 12 and isinstance(number.value, int)


def test_names_in_order() -> None:
    assert names(parse("b == 1 and (a == 2 or b == 3) and not c in (1)")) == ["b", "a", "c"]


@pytest.mark.parametrize(("source", "message"), [
    ("", "empty filter at position 1"),
    ("a = 1", "unexpected '=' (compare with ==) at position 3"),
    ("a == 'adam", "unclosed string \"'adam\" at position 6"),
    ("a == 1.2.3", "malformed number '1.2.3' at position 6"),
    ("a >> 1", "expected a number, a quoted string, true, false or null, found '>' at position 4"),
    ("a == 1 b", "expected `and`, `or` or the end of the filter, found 'b' at position 8"),
    ("a == 1 and", "expected a column name, `not` or `(`, found the end at position 11"),
    ("(a == 1", "expected `)`, found the end at position 8"),
    ("a in 1", "expected `(` after `in`, found '1' at position 6"),
    ("a in (1 2)", "expected `,` or `)`, found '2' at position 9"),
    ("a not 1", "expected `in` after `not`, found '1' at position 7"),
    ("a", "expected a comparison (==, !=, <, <=, >, >=) or `in`, found the end at position 2"),
    ("a == b", "expected a number, a quoted string, true, false or null, found 'b' at position 6"),
    ("1 == 2", "expected a column name, found '2' at position 6"),
    ("a == 1 && b == 2", "unexpected '&' at position 8"),
    ("a == 1 -- comment", "malformed number '--' at position 8"),
])
def test_malformed_filters_say_where(source: str, message: str) -> None:
    with pytest.raises(FilterError) as info:
        parse(source)
    assert str(info.value) == f"--where {source!r}: {message}"


@pytest.mark.parametrize("source", [
    "1=1; drop table trials",
    "value > 0; DROP TABLE trials",
    "value > 0 or 1=1",
    "value > 0) or (1 == 1",
    "optimizer == 'adam'; delete from trials; --'",
    "optimizer == 'adam'' or ''1''=''1'",
    "value > 0 union select * from studies",
    "value > (select max(value) from trial_values)",
    "value > 0 /* */",
    "x`; drop table trials",
])
def test_injection_attempts_do_not_parse(source: str) -> None:
    with pytest.raises(FilterError, match=r"at position \d+"):
        parse(source)


# --- filters on a real study, against Optuna ----------------------------------------------


@pytest.fixture(scope="module")
def study_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[TunerStorage, str, Path]:
    """A study with floats, ints, a categorical with a conditional, and bools."""
    path = tmp_path_factory.mktemp("filter") / "tuner.db"
    url = f"sqlite:///{path}"
    storage = TunerStorage(url, heartbeat=False).open()
    study = optuna.create_study(study_name="s", storage=storage.optuna, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=3))
    for i in range(60):
        trial = study.ask()
        dropout = trial.suggest_float("dropout", 0.0, 0.5)
        trial.suggest_int("layers", 1, 4)
        opt = trial.suggest_categorical("optimizer", ["adam", "sgd", "momentum"])
        trial.suggest_categorical("batchnorm", [False, True])
        if opt == "momentum":
            trial.suggest_float("momentum", 0.5, 0.99)
        if i % 7 == 3:
            study.tell(trial, state=TrialState.FAIL)
        elif i % 5 == 4:
            trial.report(0.1, 1)
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, 1.0 - dropout)
    return storage, url, path


def _optuna_trials(url: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name="s", storage=url).get_trials()


CASES: list[tuple[str, Callable[[FrozenTrial], bool]]] = [
    ("optimizer == 'adam' and dropout > 0.3",
     lambda t: t.params["optimizer"] == "adam" and t.params["dropout"] > 0.3),
    ("optimizer != 'adam'", lambda t: t.params["optimizer"] != "adam"),
    ("optimizer in ('sgd', 'momentum') or layers >= 3",
     lambda t: t.params["optimizer"] in ("sgd", "momentum") or t.params["layers"] >= 3),
    ("optimizer not in ('sgd')", lambda t: t.params["optimizer"] != "sgd"),
    ("not (batchnorm == true) and layers < 3",
     lambda t: not t.params["batchnorm"] and t.params["layers"] < 3),
    ("momentum > 0.7", lambda t: t.params.get("momentum", -1) > 0.7),
    ("momentum == null", lambda t: "momentum" not in t.params),
    ("momentum != null", lambda t: "momentum" in t.params),
    ("state == 'pruned'", lambda t: t.state == TrialState.PRUNED),
    ("state in ('complete', 'FAIL')", lambda t: t.state in (TrialState.COMPLETE, TrialState.FAIL)),
    ("value >= 0.75", lambda t: t.state == TrialState.COMPLETE and t.value >= 0.75),
    ("value == null", lambda t: t.value is None),
    ("number < 10 and number in (1, 2, 3, 40)", lambda t: t.number in (1, 2, 3)),
    ("0.2 >= dropout", lambda t: t.params["dropout"] <= 0.2),
    ("optimizer > 'b'", lambda t: t.params["optimizer"] > "b"),
    ("layers in (1, 4)", lambda t: t.params["layers"] in (1, 4)),
]


@pytest.mark.parametrize(("where", "reference"), CASES, ids=[c[0] for c in CASES])
def test_filter_selects_what_python_selects(study_db: tuple[TunerStorage, str, Path],
                                            where: str,
                                            reference: Callable[[FrozenTrial], bool]) -> None:
    storage, url, _ = study_db
    expected = [t.number for t in _optuna_trials(url) if reference(t)]
    assert expected, "a filter that matches nothing proves little"
    rows = queries.trials(storage, "s", where=where)
    assert [r["number"] for r in rows] == expected


def test_sort_and_limit_against_optuna(study_db: tuple[TunerStorage, str, Path]) -> None:
    storage, url, _ = study_db
    rows = queries.trials(storage, "s", where="optimizer == 'momentum'", sort=["-momentum"],
                          limit=3)
    momentum = sorted((t for t in _optuna_trials(url) if t.params["optimizer"] == "momentum"),
                      key=lambda t: -t.params["momentum"])
    assert [r["number"] for r in rows] == [t.number for t in momentum[:3]]
    by_opt = queries.trials(storage, "s", sort=["optimizer", "-layers"])
    keys = [(r["params"]["optimizer"], -r["params"]["layers"], r["number"]) for r in by_opt]
    assert keys == sorted(keys)


def test_sort_by_value_puts_missing_values_last(study_db: tuple[TunerStorage, str, Path]) -> None:
    storage, _, _ = study_db
    for key in ("value", "-value"):
        rows = queries.trials(storage, "s", sort=[key])
        values = [r["value"] for r in rows]
        present = [v for v in values if v is not None]
        assert values[:len(present)] == sorted(present, reverse=key.startswith("-"))
        assert all(v is None for v in values[len(present):])


@pytest.mark.parametrize(("where", "message"), [
    ("dropot > 0.1", "unknown column 'dropot' at position 1; study 's' has: number, state, "
                     "value, duration, best_epoch, epochs_run, seed, test_metric, batchnorm, "
                     "dropout, layers, momentum, optimizer"),
    ("optimizer == 'adm'", "'adm' is not one of its choices: 'adam', 'sgd', 'momentum' "
                           "(column 'optimizer' at position 1)"),
    ("optimizer != 3", "3 is not one of its choices"),
    ("optimizer < 3", "< cannot compare its choices ('adam', 'sgd', 'momentum') with 3"),
    ("batchnorm == 'yes'", "'yes' is not one of its choices: False, True"),
    ("dropout > 'high'", "a number is compared with 'high' (column 'dropout' at position 1)"),
    ("dropout in (0.1, true)", "a number is compared with True"),
    ("dropout > null", "null can only be compared with == or !="),
    ("state == 'done'", "'done' is not a state: complete, pruned, running, fail, waiting"),
    ("state > 'complete'", "a state can only be compared with == or !="),
])
def test_filters_that_do_not_fit_the_study(study_db: tuple[TunerStorage, str, Path], where: str,
                                           message: str) -> None:
    storage, _, _ = study_db
    with pytest.raises(FilterError) as info:
        queries.trials(storage, "s", where=where)
    assert str(info.value).startswith(f"--where {where!r}: ")
    assert message in str(info.value)


def test_unknown_sort_column(study_db: tuple[TunerStorage, str, Path]) -> None:
    storage, _, _ = study_db
    with pytest.raises(FilterError, match=r"--sort '-nope': unknown column 'nope'"):
        queries.trials(storage, "s", sort=["-nope"])


def test_strings_are_bound_never_spliced(study_db: tuple[TunerStorage, str, Path],
                                         db_snapshot: Any) -> None:
    """A quoted string is a value to compare, whatever it holds: no choice matches it,
    and the database is untouched."""
    storage, _, path = study_db
    before = db_snapshot(path)
    for evil in ("'; drop table trials; --", "adam' or '1'='1", "x\"); delete from trials; --"):
        quote = '"' if "'" in evil else "'"
        with pytest.raises(FilterError, match="is not one of its choices"):
            queries.trials(storage, "s", where=f"optimizer == {quote}{evil}{quote}")
    assert db_snapshot(path) == before
    assert len(queries.trials(storage, "s")) == 60


def test_float_comparisons_are_exact(study_db: tuple[TunerStorage, str, Path]) -> None:
    storage, url, _ = study_db
    trial = next(t for t in _optuna_trials(url) if t.state == TrialState.COMPLETE)
    rows = queries.trials(storage, "s", where=f"dropout == {trial.params['dropout']!r}")
    assert [r["number"] for r in rows] == [trial.number]
    assert math.isclose(rows[0]["params"]["dropout"], trial.params["dropout"], rel_tol=0)


@pytest.mark.parametrize(("source", "rule"), [
    ("(" * 5000 + "lr > 0" + ")" * 5000, "at most 10,000 characters"),
    ("(" * 60 + "lr > 0" + ")" * 60, "more than 50 nested brackets or `not`s"),
    ("not " * 60 + "lr > 0", "more than 50 nested brackets or `not`s"),
    (" or ".join(["lr > 0"] * 300), "more than 200 comparisons"),
])
def test_filters_past_the_bounds_are_refused_in_one_short_line(source: str, rule: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse(source)
    message = str(caught.value)
    assert rule in message and "\n" not in message and len(message) < 200


def test_a_filter_at_the_bounds_runs_in_the_database(
        runner: Any, tiny_path: Path, storage_url: str) -> None:
    """200 comparisons, 50 brackets deep: compiled and run (SQLite caps its expression
    tree at a depth of 1000), with the rows of the plain filter."""
    from tuner.cli import cli

    started = runner.invoke(cli, ["start", "--space", str(tiny_path), "--storage", storage_url,
                                  "--study", "b", "--trials", "3", "--quiet"])
    assert started.exit_code == 0, started.output

    def numbers(where: str) -> str:
        result = runner.invoke(cli, ["trials", "--study", "b", "--storage", storage_url,
                                     "--where", where, "--columns", "number", "--format",
                                     "csv"])
        assert result.exit_code == 0, result.output
        return str(result.output)

    plain = numbers("lr > 0.01")
    assert numbers(" or ".join(["lr > 0.01"] * 200)) == plain
    assert numbers("(" * 50 + "lr > 0.01" + ")" * 50) == plain
