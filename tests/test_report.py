"""`tuner report` (tuner/report/): the HTML page and the PNG files of a study."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from tuner.cli import cli
from tuner.report import write_report
from tuner.report._charts import by_choice, l2_by_batchnorm, learning_curves
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
    assert any(s.startswith("metric by optimizer: not in this study") for s in files.skipped)
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
    assert chart is not None
    by_label = {s.label: sorted(s.y) for s in chart.series}
    for opt in ("adam", "sgd", "momentum"):
        assert by_label[opt] == sorted(t.value for t in complete
                                       if t.params["optimizer"] == opt)
    scatter = l2_by_batchnorm(rows, "accuracy")
    assert scatter is not None and scatter.log_x
    on = next(s for s in scatter.series if s.label == "batchnorm True")
    assert sorted(on.x) == sorted(t.params["l2"] for t in complete if t.params["batchnorm"])
    assert l2_by_batchnorm([{"params": {"x": 1}, "value": 1.0}], "m") is None
    curves = queries.curves(storage, "reg-study", [1, 0])
    lines = learning_curves(curves, top=[1], pruned=[0], metric="accuracy")
    assert lines is not None
    best, pruned = lines.series
    assert not best.dashed and pruned.dashed
    assert dict(zip(pruned.x, pruned.y, strict=True)) == study.trials[0].intermediate_values
