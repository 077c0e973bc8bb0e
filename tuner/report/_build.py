"""``tuner report``: gather a study's results, draw every plot twice, write the files.

Optuna's own plots (history, parallel coordinates, slices) come from
``optuna.visualization`` for the HTML and ``optuna.visualization.matplotlib`` for the
PNGs, focused by ``_optuna_plots.py``; the rest (learning curves, importances drawn once
computed, metric by optimizer, by schedule, against L2 by batch normalization) are
:class:`Chart` data drawn by both. A plot the study cannot give is listed, with the
reason, under "Left out".
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from tuner import queries
from tuner.errors import TunerError
from tuner.report import _charts, _optuna_plots
from tuner.report._charts import ChartSkipped
from tuner.report._draw import to_matplotlib, to_plotly
from tuner.report._html import Section, render
from tuner.report._optuna_plots import Plot
from tuner.run.study import require_study, stored_space
from tuner.storage import TunerStorage

TOP = 5  # learning curves of this many best trials
PRUNED = 10  # and of at most this many pruned ones (the latest)


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    pngs: tuple[Path, ...]
    skipped: tuple[str, ...]  # plots left out, each with the reason
    sections: tuple[Section, ...] = ()  # the plots on the page: figures and captions


def _user_params(storage: TunerStorage, study: str) -> list[str]:
    """The names of the space's ``user_params`` (none for a study the tuner did not
    create)."""
    try:
        return [p.name for p in stored_space(storage, study).user_params]
    except TunerError:
        return []


def _varies(rows: list[dict[str, Any]], param: str) -> bool:
    try:
        _charts.check_varies(rows, param)
    except ChartSkipped:
        return False
    return True


def _close(figure: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(figure)


def _importances(study: optuna.Study) -> dict[str, float]:
    return optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))


def write_report(storage: TunerStorage, study: str, out: Path) -> ReportFiles:
    """Write ``out/index.html`` (interactive plots, a summary on top) and one PNG per plot.

    >>> files = write_report(storage, "reg", Path("report"))  # doctest: +SKIP
    """
    require_study(storage, study)
    summary = next(r for r in queries.studies(storage) if r["study"] == study)
    rows = queries.trials(storage, study)
    complete = [r for r in rows if r["state"] == "complete"]
    best = queries.best_trials(storage, study, TOP) if complete else []
    pruned = [r["number"] for r in rows if r["state"] == "pruned"][-PRUNED:]
    top = [r["number"] for r in best]
    curves = queries.curves(storage, study, top + pruned) if top or pruned else []
    metric = queries.study_metric(storage, study) or "value"
    loaded = optuna.load_study(study_name=study, storage=storage.optuna)
    # Parameters that take one value only would be a flat line on every plot.
    varying = [p for p in queries.param_names(complete) if _varies(complete, p)]
    skipped: list[str] = []

    importance: dict[str, float] | None = None
    importance_error = "no complete trial yet"
    if complete:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importance = _importances(loaded)
        except (ValueError, RuntimeError) as exc:
            importance_error = str(exc)

    def importance_chart() -> _charts.Chart:
        if importance is None:
            raise ChartSkipped(importance_error)
        return _charts.importances(importance)

    values = [r["value"] for r in complete if r["value"] is not None]
    plots: list[tuple[str, Callable[[], Plot]]] = [
        ("Optimization history", lambda: _optuna_plots.optimization_history(
            loaded, values, best[0]["value"])),
        ("Parallel coordinates", lambda: _optuna_plots.parallel_coordinate(
            loaded, varying, importance)),
    ]
    strengths = [p for p in _charts.STRENGTHS if p in varying]
    if strengths:
        plots.append(("Slice plots of the regularization strengths",
                      lambda: _optuna_plots.slices(
                          loaded, "slice_regularization",
                          "Slice plots of the regularization strengths", strengths)))
    yours = [p for p in _user_params(storage, study) if p in varying]
    if yours:
        plots.append(("Slice plots of your parameters", lambda: _optuna_plots.slices(
            loaded, "slice_user_params", "Slice plots of your parameters (user_params)",
            yours)))
    charts: list[tuple[str, Callable[[], _charts.Chart]]] = [
        ("learning curves", lambda: _charts.learning_curves(curves, top, pruned, metric)),
        ("parameter importances", importance_chart),
        ("metric by optimizer", lambda: _charts.by_choice(complete, "optimizer", metric)),
        ("metric by schedule", lambda: _charts.by_choice(complete, "schedule", metric)),
        ("metric against l2 by batchnorm", lambda: _charts.l2_by_batchnorm(complete, metric)),
    ]

    out.mkdir(parents=True, exist_ok=True)
    sections: list[Section] = []
    pngs: list[Path] = []

    def add(name: str, title: str, figure: Any, png_figure: Any, caption: str) -> None:
        path = out / f"{name}.png"
        png_figure.savefig(path, dpi=100)
        _close(png_figure)
        pngs.append(path)
        sections.append(Section(name, title, figure, path.name, caption))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's "experimental" notices for matplotlib
        if not complete:
            skipped.append("Optuna's plots: no complete trial yet")
        for title, make_plot in plots if complete else []:
            try:
                plot = make_plot()
            except (ValueError, RuntimeError) as exc:
                skipped.append(f"{title}: {exc}")
                continue
            add(plot.name, plot.title, plot.figure, plot.png_figure, plot.caption)
        for title, make in charts:
            try:
                chart = make()
            except (ChartSkipped, ValueError, RuntimeError) as exc:
                skipped.append(f"{title}: {exc}")
                continue
            add(chart.name, chart.title, to_plotly(chart), to_matplotlib(chart), chart.caption)
    html = out / "index.html"
    html.write_text(render(study, summary, best, metric, sections, skipped), encoding="utf-8")
    return ReportFiles(html, tuple(pngs), tuple(skipped), tuple(sections))
