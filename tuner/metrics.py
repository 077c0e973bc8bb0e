"""Losses and validation metrics, computed on the device without host syncs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Metric:
    name: str
    task: str  # "classification" or "regression"
    direction: str  # "maximize" or "minimize"

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"


METRICS: dict[str, Metric] = {
    "accuracy": Metric("accuracy", "classification", "maximize"),
    "cross_entropy": Metric("cross_entropy", "classification", "minimize"),
    "rmse": Metric("rmse", "regression", "minimize"),
    "mae": Metric("mae", "regression", "minimize"),
}


def loss_fn(task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The training loss: cross-entropy on logits, or MSE on standardized targets."""
    if task == "classification":
        return F.cross_entropy(output, target)
    return F.mse_loss(output.squeeze(-1), target)


def metric_value(metric: Metric, output: torch.Tensor, target: torch.Tensor,
                 y_scale: float = 1.0) -> torch.Tensor:
    """The metric over a whole split, as a 0-d tensor; regression errors in target units."""
    if metric.name == "accuracy":
        return (output.argmax(dim=-1) == target).float().mean()
    if metric.name == "cross_entropy":
        return F.cross_entropy(output, target)
    error = output.squeeze(-1) - target
    if metric.name == "rmse":
        return error.pow(2).mean().sqrt() * y_scale
    return error.abs().mean() * y_scale


def is_better(metric: Metric, value: float, best: float | None, min_delta: float = 0.0) -> bool:
    """Whether ``value`` improves on ``best`` by more than ``min_delta``."""
    if best is None:
        return value == value  # not NaN
    if metric.maximize:
        return value > best + min_delta
    return value < best - min_delta
