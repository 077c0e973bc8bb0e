"""Losses and validation metrics per member: :mod:`tuner.train.metrics` with a member axis.

Outputs are ``[K, B, n_outputs]`` and targets ``[B]`` (every member sees the same
batch); results are ``[K]`` tensors on the device, so an epoch still syncs once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tuner.fused._model import FusedMLP
from tuner.train.metrics import Metric

# Activations held at once in evaluation: K x rows x width values.
_EVAL_VALUES = 1 << 20


def member_loss(task: str, output: Tensor, target: Tensor) -> Tensor:
    """Each member's training loss, as :func:`tuner.train.metrics.loss_fn` computes it."""
    if task == "classification":
        # Logits as [K, classes, B]: cross-entropy's "N, C, d" form, one row per member.
        # FusedMLP's outputs are views of exactly that layout, the fast one.
        logits = output.transpose(1, 2)
        return F.cross_entropy(logits, target.expand(output.shape[0], -1),
                               reduction="none").mean(1)
    return (output[..., 0] - target).pow(2).mean(1)


def member_metric(metric: Metric, output: Tensor, target: Tensor,
                  y_scale: float = 1.0) -> Tensor:
    """Each member's ``metric``, as :func:`tuner.train.metrics.metric_value` computes it."""
    if metric.name == "accuracy":
        # max(...).indices is argmax (the first maximal index) by a faster kernel.
        predicted = output.transpose(1, 2).max(dim=1).indices
        return (predicted == target).to(torch.float64).mean(1)  # exact, as metric_value
    if metric.name == "cross_entropy":
        return member_loss("classification", output, target)
    error = output[..., 0] - target
    if metric.name == "rmse":
        return error.pow(2).mean(1).sqrt() * y_scale
    return error.abs().mean(1) * y_scale


@torch.no_grad()
def evaluate_members(model: FusedMLP, x: Tensor, y: Tensor, task: str, metric: Metric,
                     y_scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Every member's loss and metric over a whole split, in eval mode: two ``[K]`` tensors."""
    width = max(model.spec.hidden, model.spec.n_features)
    rows = max(64, _EVAL_VALUES // (model.size * width))
    chunks = [model.forward(x[i:i + rows], train=False).transpose(1, 2)
              for i in range(0, x.shape[0], rows)]
    output = torch.cat(chunks, dim=2).transpose(1, 2)  # keeps the [K, classes, N] layout
    return member_loss(task, output, y), member_metric(metric, output, y, y_scale)
