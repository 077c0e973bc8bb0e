"""`tuner report` (tuner/report/): the HTML page and the PNG files of a study."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from tuner.cli import cli
from tuner.report import write_report
from tuner.report._charts import ChartSkipped, by_choice, l2_by_batchnorm, learning_curves
from tuner.report._optuna_plots import parallel_params, robust_range
from tuner.storage import TunerStorage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_PLOTS = {"optimization_history", "learning_curves", "param_importances",
             "parallel_coordinate", "slice_regularization", "by_optimizer", "by_schedule",
             "l2_by_batchnorm"}


def _regularization_study(storage: TunerStorage, name: str = "reg-study") -> optuna.Study:
    """Parameters like the regularization space's, with pruned trials and curves."""
    study = optuna.create_study(study_name=name, storage=storage.optuna, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(30):
        trial = study.ask()
        l2 = trial.suggest_float("l2", 1e-6, 1e-2, log=True)
        dropout = trial.suggest_float("dropout", 0.0, 0.5)
        bn = trial.suggest_categorical("batchnorm", [False, True])
        opt = trial.suggest_categorical("optimizer", ["adam", "sgd", "momentum"])
        trial.suggest_categorical("schedule", ["none", "cosine"])
        if opt == "momentum":
            trial.suggest_float("momentum", 0.5, 0.99)
        final = 0.9 - 0.1 * dropout - 0.01 * abs(math.log10(l2) + 4) + 0.02 * bn
        epochs = 3 if i % 5 == 0 else 6
        for epoch in range(1, epochs + 1):
            trial.report(final * (1 - math.exp(-epoch / 2)), epoch)
        if i % 5 == 0:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, final)
    return study


@pytest.fixture
def reg_db(storage_url: str) -> tuple[TunerStorage, str]:
    storage = TunerStorage(storage_url, heartbeat=False).open()
    _regularization_study(storage)
    return storage, storage_url


@pytest.mark.slow
def test_report_writes_every_plot(reg_db: tuple[TunerStorage, str], tmp_path: Path,
                                  db_path: Path, db_snapshot: Any) -> None:
    _, url = reg_db
    before = db_snapshot(db_path)
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["report", "--study", "reg-study", "--storage", url,
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"Wrote {out / 'index.html'} and {len(ALL_PLOTS)} PNG files." in result.stdout
    assert {p.stem for p in out.glob("*.png")} == ALL_PLOTS
    for png in out.glob("*.png"):
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, png.name
    page = (out / "index.html").read_text()
    assert "<h1>Study reg-study</h1>" in page
    assert page.count("<section>") == len(ALL_PLOTS)
    assert page.count("plotly.js v") == 1  # embedded once, inline: works offline
    study = optuna.load_study(study_name="reg-study", storage=url)
    best = study.best_trial
    # the summary table on top names the best trial and its value
    summary = page[:page.index("<section>")]
    assert f"<td>{best.number}</td><td>{best.value:.6g}</td>" in summary
    assert "Left out" not in page
    assert db_snapshot(db_path) == before  # a report reads, never writes


def test_report_says_what_it_left_out(storage_url: str, tmp_path: Path) -> None:
    """A study without the regularization parameters, and one with no complete trial."""
    storage = TunerStorage(storage_url, heartbeat=False).open()
    study = optuna.create_study(study_name="plain", storage=storage.optuna)
    study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=5)
    files = write_report(storage, "plain", tmp_path / "plain")
    assert {p.stem for p in files.pngs} == {"optimization_history", "parallel_coordinate",
                                            "param_importances"}
    assert all(p.stat().st_size > 0 for p in files.pngs)
    assert "metric by optimizer: optimizer is not a parameter of this study's complete trials" in (
        files.skipped)
    assert not any(s.startswith("metric against l2") and "batchnorm" not in s
                   for s in files.skipped)
    assert "plain" in files.html.read_text()

    optuna.create_study(study_name="empty", storage=storage.optuna)
    files = write_report(storage, "empty", tmp_path / "empty")
    assert files.pngs == ()
    page = files.html.read_text()
    assert "<h1>Study empty</h1>" in page and "No complete trial yet." in page


def test_chart_data_against_optuna(reg_db: tuple[TunerStorage, str]) -> None:
    """The custom plots' data: what Optuna says about the same trials."""
    from tuner import queries

    storage, url = reg_db
    study = optuna.load_study(study_name="reg-study", storage=url)
    rows = [r for r in queries.trials(storage, "reg-study") if r["state"] == "complete"]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    chart = by_choice(rows, "optimizer", "accuracy")
    by_label = {s.label: sorted(s.y) for s in chart.series}
    for opt in ("adam", "sgd", "momentum"):
        values = sorted(t.value for t in complete if t.params["optimizer"] == opt)
        assert by_label[f"{opt} (n={len(values)})"] == values  # each box says its n
    scatter = l2_by_batchnorm(rows, "accuracy")
    assert scatter.log_x
    on = next(s for s in scatter.series if s.label.startswith("batchnorm True (n="))
    assert sorted(on.x) == sorted(t.params["l2"] for t in complete if t.params["batchnorm"])
    assert on.label == f"batchnorm True (n={len(on.x)})"
    curves = queries.curves(storage, "reg-study", [1, 0])
    lines = learning_curves(curves, top=[1], pruned=[0], metric="accuracy")
    best, pruned = lines.series
    assert not best.dashed and pruned.dashed
    assert dict(zip(pruned.x, pruned.y, strict=True)) == study.trials[0].intermediate_values


# --- focused plots: what they show and what they say they left out --------------------------

WIDE = [f"p{i:02d}" for i in range(12)]
OUTLIER = 17  # the trial whose value is far below every other


@pytest.fixture(scope="module")
def wide_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A plain Optuna study of 13 searched parameters (a few matter), one optimizer
    choice, no batch normalization, one outlying trial; and its report."""
    folder = tmp_path_factory.mktemp("wide")
    storage = TunerStorage(f"sqlite:///{folder / 'wide.db'}", heartbeat=False).open()
    study = optuna.create_study(study_name="wide", storage=storage.optuna,
                                direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=3))
    for i in range(40):
        trial = study.ask()
        xs = [trial.suggest_float(name, 0.0, 1.0) for name in WIDE]
        trial.suggest_float("l2", 1e-6, 1e-2, log=True)
        trial.suggest_categorical("optimizer", ["adam"])
        value = 0.9 - 0.3 * xs[0] ** 2 - 0.2 * xs[1] - 0.1 * xs[2] - 0.01 * sum(xs[3:])
        study.tell(trial, -50.0 if i == OUTLIER else value)
    files = write_report(storage, "wide", folder / "report")
    return {"study": study, "files": files,
            "sections": {s.name: s for s in files.sections}}


def test_parallel_coordinates_show_the_most_important_parameters(
        wide_report: dict[str, Any]) -> None:
    study = wide_report["study"]
    section = wide_report["sections"]["parallel_coordinate"]
    axes = list(section.figure.layout.xaxis.ticktext)[1:]  # one axis a tick, after the value
    # Optuna's own ranking of the same study, by the report's evaluator.
    ranking = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    varying = [*WIDE, "l2"]  # optimizer has one choice: no axis of its own
    expected = [p for p in ranking if p in varying][:8]
    assert len(axes) == 8 and sorted(axes) == sorted(expected)
    assert "optimizer" not in axes
    caption = section.caption
    assert f"8 of the {len(varying)} parameters that vary" in caption
    shown, left = caption.split("Left out: ")
    assert all(p in shown for p in expected)
    assert sorted(left.rstrip(".").split(", ")) == sorted(set(varying) - set(expected))
    assert section.caption in wide_report["files"].html.read_text()


def test_optimization_history_leaves_the_outlier_out_and_says_so(
        wide_report: dict[str, Any]) -> None:
    study = wide_report["study"]
    values = [t.value for t in study.trials]
    others = [v for i, v in enumerate(values) if i != OUTLIER]
    section = wide_report["sections"]["optimization_history"]
    low, high = section.figure.layout.yaxis.range
    assert values[OUTLIER] < low <= min(others)
    assert high >= study.best_value
    assert (high - low) < 2 * (max(others) - min(others))  # not squashed
    assert "1 outlying trial(s)" in section.caption and "1 below" in section.caption


def test_charts_of_a_parameter_the_study_lacks_or_fixes_are_left_out(
        wide_report: dict[str, Any]) -> None:
    files = wide_report["files"]
    drawn = {p.stem for p in files.pngs}
    assert "l2_by_batchnorm" not in drawn and "by_optimizer" not in drawn
    assert ("metric against l2 by batchnorm: batchnorm is not a parameter of this study's "
            "complete trials") in files.skipped
    assert "metric by optimizer: optimizer is 'adam' in every complete trial" in files.skipped
    assert "slice_regularization" in drawn  # l2 varies


def test_l2_by_batchnorm_needs_batchnorm_to_vary() -> None:
    rows = [{"params": {"l2": 10.0 ** -k, "batchnorm": True}, "value": 0.5 + k / 10}
            for k in range(1, 5)]
    with pytest.raises(ChartSkipped, match="batchnorm is True in every complete trial"):
        l2_by_batchnorm(rows, "accuracy")
    rows[0]["params"]["batchnorm"] = False
    chart = l2_by_batchnorm(rows, "accuracy")
    assert sorted(s.label for s in chart.series) == ["batchnorm False (n=1)",
                                                     "batchnorm True (n=3)"]
    with pytest.raises(ChartSkipped, match="batchnorm is not a parameter"):
        l2_by_batchnorm([{"params": {"l2": 0.1}, "value": 1.0}] * 2, "accuracy")


def test_robust_range() -> None:
    gen = np.random.default_rng(0)
    values = list(0.9 + 0.02 * gen.standard_normal(50))
    assert robust_range(values, max(values)) is None  # nothing to leave out
    limits = robust_range([*values, 0.0, -3.0], max(values))
    assert limits is not None and (limits.below, limits.above) == (2, 0)
    assert 0.0 < limits.low <= min(values) and limits.high >= max(values)
    # The best value stays in view even when it is far from the rest.
    limits = robust_range([*values, 5.0, -3.0], 5.0)
    assert limits is not None and limits.high >= 5.0 and limits.below == 1
    assert robust_range([1.0, 2.0], 2.0) is None  # too few to tell


def test_parallel_params_order() -> None:
    shown, left = parallel_params(["a", "b", "c", "d"], {"c": 0.6, "a": 0.3, "b": 0.1},
                                  top=3)
    assert (shown, left) == (["c", "a", "b"], ["d"])  # d (conditional) has no importance
    assert parallel_params(["a", "b"], None, top=1) == (["a"], ["b"])
