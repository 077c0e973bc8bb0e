"""The plots Optuna's visualization lacks, as plain data: drawn by plotly and matplotlib.

A :class:`Chart` is what to draw (lines, boxes or a scatter, with labelled series);
``_plotly.py`` and ``_matplotlib.py`` draw it, so the HTML and the PNG show the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Regularization strengths, for the slice plots (those the study has).
STRENGTHS = ("l2", "l1", "weight_decay", "dropout", "input_noise", "max_norm")


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


def learning_curves(curves: Sequence[dict[str, Any]], top: Sequence[int],
                    pruned: Sequence[int], metric: str) -> Chart | None:
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
        return None
    return Chart("learning_curves", "Learning curves: the best trials and pruned ones",
                 "lines", "epoch", f"validation {metric}", tuple(series))


def by_choice(rows: Sequence[dict[str, Any]], param: str, metric: str) -> Chart | None:
    """Validation metric of complete trials, one box per choice of ``param``."""
    groups: dict[str, list[float]] = {}
    for row in rows:
        if param in row["params"] and row["value"] is not None:
            groups.setdefault(str(row["params"][param]), []).append(row["value"])
    if not groups:
        return None
    series = tuple(Series(label, (), tuple(ys)) for label, ys in sorted(groups.items()))
    return Chart(f"by_{param}", f"Validation {metric} by {param}", "box", param,
                 f"validation {metric}", series)


def l2_by_batchnorm(rows: Sequence[dict[str, Any]], metric: str) -> Chart | None:
    """Validation metric against the L2 strength, coloured by batch normalization."""
    groups: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        params = row["params"]
        if "l2" in params and row["value"] is not None:
            label = f"batchnorm {params['batchnorm']}" if "batchnorm" in params else "all"
            groups.setdefault(label, []).append((params["l2"], row["value"]))
    if not groups:
        return None
    series = tuple(Series(label, tuple(p[0] for p in pts), tuple(p[1] for p in pts))
                   for label, pts in sorted(groups.items()))
    return Chart("l2_by_batchnorm", f"Validation {metric} against L2, by batch normalization",
                 "scatter", "l2", f"validation {metric}", series, log_x=True)


def importances(values: dict[str, float]) -> Chart | None:
    """Parameter importances (computed once by Optuna), most important on top."""
    if not values:
        return None
    ordered = sorted(values.items(), key=lambda kv: kv[1])
    return Chart("param_importances", "Parameter importances (fANOVA)", "bar",
                 "importance", "parameter",
                 (Series("importance", tuple(k for k, _ in ordered),
                         tuple(v for _, v in ordered)),))
