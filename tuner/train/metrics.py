"""Losses and validation metrics, computed on the device without host syncs.

A task may name functions of yours instead (``task.loss``, ``task.metric``):
:func:`task_loss` and :func:`task_metric` resolve them, and what they raise or return
wrongly fails the trial (:class:`~tuner.errors.TrialFailed`), not the study.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tuner.catalogue import METRIC_KINDS
from tuner.errors import TrialFailed

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Metric:
    """A validation metric: a built-in one by name, or a function of yours (``fn``,
    ``fn(outputs, targets) -> float``; ``name`` is its reference)."""

    name: str
    task: str  # "classification" or "regression" ("any" for a function of yours)
    direction: str  # "maximize" or "minimize"
    fn: Callable[[torch.Tensor, torch.Tensor], Any] | None = None

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    @property
    def label(self) -> str:
        """How outputs name it: the built-in name, or your function's name."""
        return self.name.rpartition(":")[2]


# The built-in metrics, as the catalogue names them (the space reader checks a space
# against the catalogue's table, without importing torch).
METRICS: dict[str, Metric] = {name: Metric(name, kind.task, kind.direction)
                              for name, kind in METRIC_KINDS.items()}


def loss_fn(task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The training loss: cross-entropy on logits, or MSE on standardized targets."""
    if task == "classification":
        return F.cross_entropy(output, target)
    return F.mse_loss(output.squeeze(-1), target)


def task_metric(task: Any) -> Metric:
    """The metric a task names: built-in, or a function of yours (imported once)."""
    if task.metric in METRICS:
        return METRICS[task.metric]
    if getattr(task, "objective", None):  # a training function of yours: only its name
        return Metric(task.metric, "any", task.direction)
    from tuner.usercode import import_reference

    return Metric(task.metric, "any", task.direction, import_reference(task.metric, ""))


def task_loss(task: Any) -> Loss | None:
    """The loss function of yours a task names (``task.loss``), or None: the built-in one."""
    if not getattr(task, "loss", None):
        return None
    from tuner.usercode import import_reference

    function = import_reference(task.loss, "")
    reference = task.loss

    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        try:
            value = function(output, target)
        except Exception as exc:  # code of yours: the trial fails with its words
            raise TrialFailed(f"task.loss {reference}: raised {type(exc).__name__}: "
                              f"{exc}") from exc
        if not isinstance(value, torch.Tensor) or value.ndim != 0:
            shape = (f"a tensor of shape {list(value.shape)}" if isinstance(value, torch.Tensor)
                     else type(value).__name__)
            raise TrialFailed(f"task.loss {reference}: must return a scalar (0-d) tensor, but "
                              f"returned {shape}")
        if not value.requires_grad and output.requires_grad:
            raise TrialFailed(f"task.loss {reference}: returned a tensor with no gradient; "
                              "compute it from the outputs (with torch operations)")
        return value

    return loss


def data_loss(task: str, output: torch.Tensor, target: torch.Tensor,
              loss: Loss | None = None) -> torch.Tensor:
    """The training loss: the built-in one (:func:`loss_fn`), or ``loss`` of yours."""
    return loss_fn(task, output, target) if loss is None else loss(output, target)


def metric_value(metric: Metric, output: torch.Tensor, target: torch.Tensor,
                 y_scale: float = 1.0, y_mean: float = 0.0) -> torch.Tensor:
    """The metric over a whole split, as a 0-d tensor; regression errors in target units.

    A function of yours gets the outputs and targets (regression's in target units:
    ``y_scale`` and ``y_mean`` undo the standardization); what it returns must be a
    finite number.
    """
    if metric.fn is not None:
        if output.is_floating_point() and target.is_floating_point() and (
                y_scale != 1.0 or y_mean != 0.0):
            output, target = output * y_scale + y_mean, target * y_scale + y_mean
        return torch.tensor(user_metric(metric, output, target), dtype=torch.float64,
                            device=output.device)
    if metric.name == "accuracy":
        # In float64: hits / n as Python divides them. A float32 mean stores 355/360 as
        # 0.98611110448837 (what the study database then holds and every output shows).
        return (output.argmax(dim=-1) == target).to(torch.float64).mean()
    if metric.name == "cross_entropy":
        return F.cross_entropy(output, target)
    error = output.squeeze(-1) - target
    if metric.name == "rmse":
        return error.pow(2).mean().sqrt() * y_scale
    return error.abs().mean() * y_scale


def user_metric(metric: Metric, output: torch.Tensor, target: torch.Tensor) -> float:
    """Your metric function's value; its errors, and a value that is not a finite number,
    fail the trial with a message that says which."""
    assert metric.fn is not None
    try:
        value = metric.fn(output, target)
    except Exception as exc:  # code of yours: the trial fails with its words
        raise TrialFailed(f"task.metric {metric.name}: raised {type(exc).__name__}: "
                          f"{exc}") from exc
    try:
        if isinstance(value, (str, bytes, bool)):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise TrialFailed(f"task.metric {metric.name}: must return a number, but returned "
                          f"{type(value).__name__}") from None
    if not math.isfinite(number):
        raise TrialFailed(f"task.metric {metric.name}: returned {number} (it must be a finite "
                          "number)")
    return number


def is_better(metric: Metric, value: float, best: float | None, min_delta: float = 0.0) -> bool:
    """Whether ``value`` improves on ``best`` by more than ``min_delta``."""
    if best is None:
        return value == value  # not NaN
    if metric.maximize:
        return value > best + min_delta
    return value < best - min_delta
