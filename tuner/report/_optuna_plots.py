"""Optuna's own plots, focused: the parallel coordinates of the parameters that matter
most, and an optimization history that one outlier does not squash.

Each is drawn twice, by ``optuna.visualization`` (plotly, for the HTML) and
``optuna.visualization.matplotlib`` (the PNG), and says under it what it left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

PARALLEL_TOP = 8  # parameters on the parallel coordinates: more axes are unreadable
# Tukey's "far out" fences: a value beyond 3 interquartile ranges of the quartiles is an
# outlier the y-range leaves outside.
FENCE = 3.0


@dataclass(frozen=True)
class Plot:
    """One of Optuna's plots, drawn by both libraries, with its caption."""

    name: str  # the PNG's file stem
    title: str
    figure: Any  # plotly
    png_figure: Any  # matplotlib
    caption: str = ""


def _first(axes: Any) -> Any:
    """The first of Optuna's matplotlib axes (one, or an array of them)."""
    return axes.flat[0] if hasattr(axes, "flat") else axes


def _png(axes: Any) -> Any:
    return _first(axes).figure


def parallel_params(varying: Sequence[str], importances: Mapping[str, float] | None,
                    top: int = PARALLEL_TOP) -> tuple[list[str], list[str]]:
    """The ``top`` parameters to draw of those that vary (``varying``, in the study's
    order), most important first (``importances``; those it lacks, conditional ones,
    come after), and the rest."""
    rank = dict(importances or {})
    ordered = sorted(varying, key=lambda p: (p not in rank, -rank.get(p, 0.0),
                                             varying.index(p)))
    return ordered[:top], ordered[top:]


def parallel_coordinate(study: optuna.Study, varying: Sequence[str],
                        importances: Mapping[str, float] | None,
                        by: str = "fANOVA importance") -> Plot:
    """Parallel coordinates of at most :data:`PARALLEL_TOP` parameters, the caption
    naming those shown and those left out."""
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_png

    shown, left = parallel_params(varying, importances)
    if not shown:
        raise ValueError("no parameter takes more than one value")
    figure = vis.plot_parallel_coordinate(study, params=shown)
    png = _png(vis_png.plot_parallel_coordinate(study, params=shown))
    # Optuna's default 6.4-inch figure crowds the axes' tick labels into each other.
    png.set_size_inches(max(8.0, 1.5 * (len(shown) + 1)), 6.0)
    if left:
        how = f"the {len(shown)} most important by {by}" if importances else (
            f"the first {len(shown)} (importances could not be computed)")
        caption = (f"{len(shown)} of the {len(varying)} parameters that vary, {how}: "
                   f"{', '.join(shown)}. Left out: {', '.join(left)}.")
    else:
        caption = f"Every parameter that varies: {', '.join(shown)}."
    return Plot("parallel_coordinate", "Parallel coordinates", figure, png, caption)


@dataclass(frozen=True)
class Range:
    """A y-range for values, and what falls outside it."""

    low: float
    high: float
    below: int
    above: int


def robust_range(values: Sequence[float], best: float) -> Range | None:
    """A y-range that holds every value but outliers (beyond :data:`FENCE` interquartile
    ranges of the quartiles), and always ``best``; None when no value is an outlier."""
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if finite.size < 4:
        return None
    q1, q3 = np.percentile(finite, [25, 75])
    spread = q3 - q1
    inside = finite[(finite >= q1 - FENCE * spread) & (finite <= q3 + FENCE * spread)]
    low, high = min(float(inside.min()), best), max(float(inside.max()), best)
    below, above = int((finite < low).sum()), int((finite > high).sum())
    if not below and not above:
        return None
    pad = 0.05 * (high - low) or 0.05 * abs(high) or 1.0
    return Range(low - pad, high + pad, below, above)


def optimization_history(study: optuna.Study, values: Sequence[float], best: float) -> Plot:
    """Optuna's optimization history; its y-range leaves outliers out (the caption says
    how many), so that the trials that matter are not squashed into a line."""
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_png

    figure = vis.plot_optimization_history(study)
    axes = _first(vis_png.plot_optimization_history(study))
    png = axes.figure
    limits = robust_range(values, best)
    caption = ""
    if limits is not None:
        figure.update_yaxes(range=[limits.low, limits.high])
        axes.set_ylim(limits.low, limits.high)
        outside = " and ".join(f"{n} {where}" for n, where in ((limits.below, "below"),
                                                                (limits.above, "above")) if n)
        caption = (f"The y-axis shows {limits.low:.4g} to {limits.high:.4g}: "
                   f"{limits.below + limits.above} outlying trial(s) lie outside it "
                   f"({outside}). Double-click the plot to show every trial.")
    return Plot("optimization_history", "Optimization history", figure, png, caption)


def slices(study: optuna.Study, name: str, title: str, params: Sequence[str]) -> Plot:
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_png

    return Plot(name, title, vis.plot_slice(study, params=list(params)),
                _png(vis_png.plot_slice(study, params=list(params))))
