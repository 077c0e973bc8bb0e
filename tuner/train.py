"""The training loop of one trial. It knows nothing of Optuna or SQL.

It takes a config, data already on the device and a ``report(metrics) -> bool``
callback (return True to stop: the trial is pruned). Batches are drawn by an
on-device permutation; the only host syncs are one per epoch, to read the metrics.

>>> from tuner.config import TrialConfig
>>> from tuner.data import load_splits
>>> data = load_splits("iris", seed=0)
>>> model = build_for(TrialConfig(epochs=3), data)
>>> result = train(model, data, TrialConfig(epochs=3), metric=METRICS["accuracy"])
>>> len(result.history)
3
"""

from __future__ import annotations

import copy
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tuner.config import TrialConfig
from tuner.data import Splits
from tuner.metrics import METRICS, Metric, is_better, loss_fn, metric_value
from tuner.models import build_model
from tuner.optim import build_optimizer, build_scheduler, step_scheduler
from tuner.regularizers import (
    add_input_noise,
    apply_max_norm,
    augment_images,
    penalized_weights,
    penalty,
)

__all__ = ["METRICS", "Checkpoint", "EpochMetrics", "TrainResult", "build_for", "evaluate",
           "train"]


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float  # the data loss, without the penalty terms
    val_loss: float
    val_metric: float
    lr: float  # the rate used during this epoch
    seconds: float


@dataclass
class TrainResult:
    history: list[EpochMetrics] = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float = math.nan
    stopped_early: bool = False
    pruned: bool = False
    diverged: bool = False


Report = Callable[[EpochMetrics], bool]


@dataclass
class Checkpoint:
    """Everything needed to continue a trial after its last finished epoch."""

    epoch: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    best_epoch: int
    best_metric: float
    best_state: dict[str, Any] | None
    history: list[EpochMetrics]
    rng: dict[str, torch.Tensor]

    def to_bytes(self) -> bytes:
        state = {**self.__dict__, "history": [tuple(vars(m).values()) for m in self.history]}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> Checkpoint:
        # weights_only: a checkpoint from the database is data, never code to run.
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        state["history"] = [EpochMetrics(*row) for row in state["history"]]
        return cls(**state)


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def build_for(config: TrialConfig, data: Splits) -> nn.Module:
    """The built-in model a config describes, sized for ``data``, on the data's device."""
    model = build_model(config.model, n_features=data.n_features, n_outputs=data.n_outputs,
                        image_shape=data.image_shape, hidden=config.hidden,
                        layers=config.layers, dropout=config.dropout,
                        dropout_kind=config.dropout_kind, batchnorm=config.batchnorm)
    return model.to(data.x_train.device)


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, metric: Metric,
             y_scale: float = 1.0, batch_size: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and metric over a whole split, in eval mode, in large batches; 0-d tensors."""
    was_training = model.training
    model.eval()
    output = torch.cat([model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    model.train(was_training)
    return loss_fn(task, output, y), metric_value(metric, output, y, y_scale)


def train(model: nn.Module, data: Splits, config: TrialConfig, *, metric: Metric,
          report: Report | None = None, resume: Checkpoint | None = None,
          checkpoint: Callable[[Checkpoint], None] | None = None,
          checkpoint_every: float = 30.0) -> TrainResult:
    """Train ``model`` on ``data`` as ``config`` says; on return it holds its best epoch's weights.

    Early stopping watches the validation metric with ``config.patience`` and
    ``config.min_delta``; ``report`` is called after every epoch and stops training
    (``pruned``) when it returns True. A non-finite training loss stops it too
    (``diverged``).

    With ``checkpoint``, a :class:`Checkpoint` is handed to it after an epoch once
    ``checkpoint_every`` seconds have passed since the last one; ``resume`` continues
    from such a checkpoint, with the same result as an uninterrupted run.
    """
    weights = penalized_weights(model)
    optimizer = build_optimizer(model.parameters(), config.optimizer,
                                **dict(config.optimizer_hyper))
    scheduler = build_scheduler(optimizer, config.schedule, **dict(config.schedule_hyper))
    x, y = data.x_train, data.y_train
    n, bs = x.shape[0], min(config.batch_size, x.shape[0])
    # A last batch of one sample breaks batch norm; fold it into the previous one.
    n_batches = max(1, n // bs if n % bs == 1 else math.ceil(n / bs))
    regularize = bool(config.l1 or config.l2)

    result = TrainResult()
    best_state: dict[str, torch.Tensor] | None = None
    first = 1
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        result.history = list(resume.history)
        result.best_epoch, result.best_metric = resume.best_epoch, resume.best_metric
        best_state = resume.best_state
        _set_rng_state(resume.rng, x.device)
        first = resume.epoch + 1
    last_checkpoint = time.monotonic()
    for epoch in range(first, config.epochs + 1):
        start = time.perf_counter()
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        order = torch.randperm(n, device=x.device)
        loss_sum = torch.zeros((), device=x.device)
        for i in range(n_batches):
            idx = order[i * bs:] if i == n_batches - 1 else order[i * bs:(i + 1) * bs]
            xb, yb = x[idx], y[idx]
            if config.augment and data.image_shape is not None:
                xb = augment_images(xb, data.image_shape)
            if config.input_noise:
                xb = add_input_noise(xb, config.input_noise)
            loss = loss_fn(data.task, model(xb), yb)
            loss_sum += loss.detach() * idx.shape[0]
            if regularize:
                loss = loss + penalty(weights, config.l1, config.l2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if config.max_norm is not None:
                apply_max_norm(weights, config.max_norm)

        val_loss, val_metric = evaluate(model, data.x_val, data.y_val, data.task, metric,
                                        data.y_std)
        # The one host sync of the epoch.
        train_loss_f, val_loss_f, val_metric_f = torch.stack(
            [loss_sum / n, val_loss, val_metric]).tolist()
        step_scheduler(scheduler, val_metric_f)
        metrics = EpochMetrics(epoch, train_loss_f, val_loss_f, val_metric_f, lr,
                               time.perf_counter() - start)
        result.history.append(metrics)

        if not math.isfinite(train_loss_f):
            result.diverged = True
            break
        if is_better(metric, val_metric_f, None if best_state is None else result.best_metric,
                     config.min_delta):
            result.best_epoch, result.best_metric = epoch, val_metric_f
            best_state = copy.deepcopy(model.state_dict())
        if report is not None and report(metrics):
            result.pruned = True
            break
        if config.patience is not None and epoch - result.best_epoch >= config.patience:
            result.stopped_early = True
            break
        if checkpoint is not None and time.monotonic() - last_checkpoint >= checkpoint_every:
            checkpoint(Checkpoint(
                epoch, copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()),
                scheduler.state_dict(), result.best_epoch, result.best_metric, best_state,
                list(result.history), _rng_state(x.device)))
            last_checkpoint = time.monotonic()

    if best_state is not None:
        model.load_state_dict(best_state)
    return result
