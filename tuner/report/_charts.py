"""The plots Optuna's visualization lacks, as plain data: drawn by plotly and matplotlib.

A :class:`Chart` is what to draw (lines, boxes or a scatter, with labelled series);
``_draw.py`` draws it with plotly and with matplotlib, so the HTML and the PNG show the
same. A chart grouped by a parameter is drawn only when the study has that parameter and
it takes more than one value; otherwise :class:`ChartSkipped` says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Regularization strengths, for the slice plots (those the study has).
STRENGTHS = ("l2", "l1", "weight_decay", "dropout", "input_noise", "max_norm")


class ChartSkipped(Exception):
    """A chart this study's trials cannot give (the message says why, for the report's
    "Left out" list)."""


@dataclass(frozen=True)
class Series:
    label: str
    x: tuple[Any, ...]
    y: tuple[float, ...]
    dashed: bool = False


@dataclass(frozen=True)
class Chart:
    name: str  # the PNG's file stem
    title: str
    kind: str  # "lines", "box", "scatter" or "bar" (horizontal: x labels, y lengths)
    x_label: str
    y_label: str
    series: tuple[Series, ...]
    log_x: bool = False
    caption: str = ""  # said under the chart


def values_of(rows: Sequence[dict[str, Any]], param: str) -> list[Any]:
    """The values ``param`` takes in ``rows`` (the trials that have it)."""
    return [row["params"][param] for row in rows if param in row["params"]]


def check_varies(rows: Sequence[dict[str, Any]], param: str) -> None:
    """Raise :class:`ChartSkipped` unless ``param`` takes two values or more in ``rows``."""
    values = values_of(rows, param)
    if not values:
        raise ChartSkipped(f"{param} is not a parameter of this study's complete trials")
    if len({(type(v), v) for v in values}) == 1:
        raise ChartSkipped(f"{param} is {values[0]!r} in every complete trial")


def learning_curves(curves: Sequence[dict[str, Any]], top: Sequence[int],
                    pruned: Sequence[int], metric: str) -> Chart:
    """Validation metric per epoch: the best trials solid, pruned ones dashed."""
    series = []
    for numbers, dashed, kind in ((top, False, "best"), (pruned, True, "pruned")):
        for n in numbers:
            points = [(c["epoch"], c["val_metric"]) for c in curves
                      if c["trial"] == n and c["val_metric"] is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                series.append(Series(f"#{n} ({kind})", xs, ys, dashed))
    if not series:
        raise ChartSkipped("no trial reported a validation value per epoch")
    return Chart("learning_curves", "Learning curves: the best trials and pruned ones",
                 "lines", "epoch", f"validation {metric}", tuple(series))


def by_choice(rows: Sequence[dict[str, Any]], param: str, metric: str) -> Chart:
    """Validation metric of complete trials, one box per choice of ``param``, each
    labelled with its number of trials."""
    check_varies(rows, param)
    groups: dict[str, list[float]] = {}
    for row in rows:
        if param in row["params"] and row["value"] is not None:
            groups.setdefault(str(row["params"][param]), []).append(row["value"])
    series = tuple(Series(f"{label} (n={len(ys)})", (), tuple(ys))
                   for label, ys in sorted(groups.items()))
    return Chart(f"by_{param}", f"Validation {metric} by {param}", "box", param,
                 f"validation {metric}", series,
                 caption=f"One box per {param}; n: the complete trials in it.")


def l2_by_batchnorm(rows: Sequence[dict[str, Any]], metric: str) -> Chart:
    """Validation metric against the L2 strength, one colour per batch normalization
    setting: drawn when both are searched and take more than one value."""
    check_varies(rows, "batchnorm")
    check_varies(rows, "l2")
    groups: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        params = row["params"]
        if "l2" in params and "batchnorm" in params and row["value"] is not None:
            groups.setdefault(f"batchnorm {params['batchnorm']}", []).append(
                (params["l2"], row["value"]))
    series = tuple(Series(f"{label} (n={len(pts)})", tuple(p[0] for p in pts),
                          tuple(p[1] for p in pts)) for label, pts in sorted(groups.items()))
    return Chart("l2_by_batchnorm", f"Validation {metric} against L2, by batch normalization",
                 "scatter", "l2", f"validation {metric}", series, log_x=True)


def importances(values: dict[str, float]) -> Chart:
    """Parameter importances (computed once by Optuna), most important on top."""
    if not values:
        raise ChartSkipped("no parameter is searched in every trial")
    ordered = sorted(values.items(), key=lambda kv: kv[1])
    return Chart("param_importances", "Parameter importances (fANOVA)", "bar",
                 "importance", "parameter",
                 (Series("importance", tuple(k for k, _ in ordered),
                         tuple(v for _, v in ordered)),))
