"""``tuner report``: gather a study's results, draw every plot twice, write the files.

Optuna's own plots (history, parallel coordinates, slices) come from
``optuna.visualization`` for the HTML and ``optuna.visualization.matplotlib`` for the
PNGs; the rest (learning curves, importances drawn once computed, metric by optimizer,
by schedule, against L2 by batch normalization) are :class:`Chart` data drawn by both.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from tuner import queries
from tuner.errors import StudyNotFoundError, TunerError
from tuner.report import _charts
from tuner.report._draw import to_matplotlib, to_plotly
from tuner.report._html import Section, render
from tuner.storage import TunerStorage
from tuner.study import require_study, stored_space

TOP = 5  # learning curves of this many best trials
PRUNED = 10  # and of at most this many pruned ones (the latest)


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    pngs: tuple[Path, ...]
    skipped: tuple[str, ...]  # plots left out, each with the reason


def _metric_and_user(storage: TunerStorage, study: str) -> tuple[str, list[str]]:
    """The metric's name (a function of yours: its name), and the names of the space's
    ``user_params``."""
    try:
        space = stored_space(storage, study)
    except (StudyNotFoundError, TunerError):
        return "value", []  # a study the tuner did not create
    return space.task.metric.rpartition(":")[2], [p.name for p in space.user_params]


def _optuna_plot(name: str, title: str, draw: Callable[[Any], Any],
                 draw_png: Callable[[Any], Any]) -> Callable[[optuna.Study], tuple[Any, Any]]:
    def both(study: optuna.Study) -> tuple[Any, Any]:
        axes = draw_png(study)
        first = axes.flat[0] if hasattr(axes, "flat") else axes
        return draw(study), first.figure
    both.__name__, both.__doc__ = name, title
    return both


def _close(figure: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(figure)


def write_report(storage: TunerStorage, study: str, out: Path) -> ReportFiles:
    """Write ``out/index.html`` (interactive plots, a summary on top) and one PNG per plot.

    >>> files = write_report(storage, "reg", Path("report"))  # doctest: +SKIP
    """
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_png

    require_study(storage, study)
    summary = next(r for r in queries.studies(storage) if r["study"] == study)
    rows = queries.trials(storage, study)
    complete = [r for r in rows if r["state"] == "complete"]
    best = queries.best_trials(storage, study, TOP) if complete else []
    pruned = [r["number"] for r in rows if r["state"] == "pruned"][-PRUNED:]
    top = [r["number"] for r in best]
    curves = queries.curves(storage, study, top + pruned) if top or pruned else []
    metric, user_params = _metric_and_user(storage, study)
    loaded = optuna.load_study(study_name=study, storage=storage.optuna)
    names = queries.param_names(rows)

    charts: list[tuple[str, Callable[[], _charts.Chart | None]]] = [
        ("learning curves", lambda: _charts.learning_curves(curves, top, pruned, metric)),
        ("parameter importances", lambda: _charts.importances(
            optuna.importance.get_param_importances(
                loaded, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)))),
        ("metric by optimizer", lambda: _charts.by_choice(complete, "optimizer", metric)),
        ("metric by schedule", lambda: _charts.by_choice(complete, "schedule", metric)),
        ("metric against l2 by batchnorm", lambda: _charts.l2_by_batchnorm(complete, metric)),
    ]
    strengths = [p for p in _charts.STRENGTHS if p in names]
    plots = [
        _optuna_plot("optimization_history", "Optimization history",
                     vis.plot_optimization_history, vis_png.plot_optimization_history),
        _optuna_plot("parallel_coordinate", "Parallel coordinates",
                     vis.plot_parallel_coordinate, vis_png.plot_parallel_coordinate),
    ]
    if strengths:
        plots.append(_optuna_plot(
            "slice_regularization", "Slice plots of the regularization strengths",
            lambda s: vis.plot_slice(s, params=strengths),
            lambda s: vis_png.plot_slice(s, params=strengths)))
    yours = [p for p in user_params if p in names]  # searched ones: Optuna recorded them
    if yours:
        plots.append(_optuna_plot(
            "slice_user_params", "Slice plots of your parameters (user_params)",
            lambda s: vis.plot_slice(s, params=yours),
            lambda s: vis_png.plot_slice(s, params=yours)))

    out.mkdir(parents=True, exist_ok=True)
    sections: list[Section] = []
    skipped: list[str] = []
    pngs: list[Path] = []

    def add(name: str, title: str, figure: Any, png_figure: Any) -> None:
        path = out / f"{name}.png"
        png_figure.savefig(path, dpi=100)
        _close(png_figure)
        pngs.append(path)
        sections.append(Section(title, figure, path.name))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's "experimental" notices for matplotlib
        if not complete:
            skipped.append("Optuna's plots: no complete trial yet")
        for plot in plots if complete else []:
            try:
                figure, png_figure = plot(loaded)
            except (ValueError, RuntimeError) as exc:
                skipped.append(f"{plot.__doc__}: {exc}")
                continue
            add(plot.__name__, plot.__doc__ or "", figure, png_figure)
        for title, make in charts:
            try:
                chart = make()
            except (ValueError, RuntimeError) as exc:
                skipped.append(f"{title}: {exc}")
                continue
            if chart is None:
                skipped.append(f"{title}: not in this study")
                continue
            add(chart.name, chart.title, to_plotly(chart), to_matplotlib(chart))
    html = out / "index.html"
    html.write_text(render(study, summary, best, metric, sections, skipped), encoding="utf-8")
    return ReportFiles(html, tuple(pngs), tuple(skipped))
