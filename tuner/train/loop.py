"""The training loop of one trial. It knows nothing of Optuna or SQL.

It takes a config, data already on the device and a ``report(metrics) -> bool``
callback (return True to stop: the trial is pruned). Batches are drawn by an
on-device permutation; the only host syncs are one per epoch, to read the metrics
(and, in float16, one per batch where the optimizer has no fused kernel to take
``GradScaler``'s overflow flag: torch's ``GradScaler.step`` reads it on the host).

>>> from tuner.train.config import TrialConfig
>>> from tuner.data.builtin import load_splits
>>> data = load_splits("iris", seed=0)
>>> model = build_for(TrialConfig(epochs=3), data)
>>> result = train(model, data, TrialConfig(epochs=3), metric=METRICS["accuracy"])
>>> len(result.history)
3
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tuner.catalogue import MODELS, PRECISIONS
from tuner.data.builtin import Splits
from tuner.data.datasets import DatasetSplits
from tuner.errors import TrialFailed, UsageError
from tuner.train.config import Config, TrialConfig
from tuner.train.device import flush_denormals
from tuner.train.dropout import Dropout, epoch_masks
from tuner.train.metrics import METRICS, Loss, Metric, data_loss, is_better, loss_fn, metric_value
from tuner.train.models import GaussianDropout, build_model
from tuner.train.optim import FastStep, build_optimizer, build_scheduler, step_scheduler
from tuner.train.regularizers import (
    add_input_noise,
    apply_max_norm,
    augment_images,
    penalized_weights,
    penalty,
)

# A trial's data: arrays on the device, or Datasets read through a DataLoader.
Data = Splits | DatasetSplits

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
    # Further per-epoch values a training function of yours reported, by name.
    extra: tuple[tuple[str, float], ...] = ()


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
    # float16's loss scale (a torch.amp.GradScaler state_dict); None in other precisions.
    scaler: dict[str, Any] | None = None

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


def _uses_aux(config: TrialConfig, data: Data) -> bool:
    """Multi-task training: an auxiliary target exists and its loss has a weight."""
    return bool(config.aux_weight) and data.aux_train is not None


def check_aux_head(model: nn.Module, config: TrialConfig, data: Data) -> None:
    """A trial that weighs an auxiliary loss needs a model with an auxiliary head."""
    if _uses_aux(config, data) and not hasattr(model, "forward_with_aux"):
        raise UsageError("aux_weight > 0 needs a model with an auxiliary head (the built-in "
                         "mlp has one; a model of your own would need forward_with_aux)")


def build_for(config: TrialConfig, data: Data) -> nn.Module:
    """The model a config describes (built-in or the user's), sized for ``data``, on the
    data's device."""
    if config.model not in MODELS:
        from tuner.train.usermodel import build_user_model

        user = build_user_model(config.model, Config(config, device=data.device),
                                data.input_shape, data.n_outputs)
        return user.to(data.device)
    model = build_model(config.model, n_features=data.n_features, n_outputs=data.n_outputs,
                        image_shape=data.image_shape, hidden=config.hidden,
                        layers=config.layers, dropout=config.dropout,
                        dropout_kind=config.dropout_kind, batchnorm=config.batchnorm,
                        aux_outputs=data.aux_outputs if _uses_aux(config, data) else 0)
    return model.to(data.device)


# Graphs torch.compile keeps per function before it falls back to running it uncompiled:
# each architecture a study tries costs one or two (a second batch size makes a graph
# with a dynamic batch axis); torch's default is 8.
RECOMPILE_LIMIT = 64


def half_dtype(precision: str) -> torch.dtype | None:
    """The reduced dtype of a mixed ``precision`` (``bf16``, ``fp16``); None for fp32.

    Raises ``ValueError`` for a precision the tuner does not know.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of: "
                         f"{', '.join(PRECISIONS)}")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def compile_model(model: nn.Module) -> nn.Module:
    """Compile ``model``'s forward with ``torch.compile``, in place: its ``state_dict``,
    checkpoints and exports are the uncompiled model's. Training computes what it does
    uncompiled (to float rounding); the first batches of each new shape pay for the
    compilation.

    The tuner's dropout layers draw their masks inside the graph, from the compiler's
    random stream, with their rate as a tensor buffer (not in the ``state_dict``), so
    that the whole forward pass is one graph and every trial's rate reuses it. Without
    dropout, a compiled trial trains the uncompiled curve to float rounding; with it,
    the masks are other draws of the same rates.
    """
    import torch._dynamo

    config = torch._dynamo.config
    # torch before 2.7 calls it cache_size_limit.
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    for module in model.modules():
        if isinstance(module, Dropout):
            module.register_buffer("rate", torch.tensor(float(module.p), device=device),
                                   persistent=False)
        elif isinstance(module, GaussianDropout):
            module.register_buffer("noise_std", torch.tensor(module.std, device=device),
                                   persistent=False)
    model.compile()
    return model


def uncompile_model(model: nn.Module) -> None:
    """Drop what :func:`compile_model` attached: the compiled forward holds a bound method
    of the model, a reference cycle that only a full garbage collection frees (and with
    it the model's device memory); without it the model goes when its last reference
    does."""
    model._compiled_call_impl = None


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, metric: Metric,
             y_scale: float = 1.0, batch_size: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and metric over a whole split, in eval mode, in large batches; 0-d tensors."""
    was_training = model.training
    model.eval()
    output = torch.cat([model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    model.train(was_training)
    return loss_fn(task, output, y), metric_value(metric, output, y, y_scale)


@torch.inference_mode()
def evaluate_split(model: nn.Module, data: Data, split: str, metric: Metric,
                   loss: Loss | None = None,
                   model_name: str = "mlp") -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and metric of ``model`` over ``data``'s ``split`` (``val``, ``test``), in eval
    mode: 0-d tensors. A built-in model reads Datasets' items flattened."""
    was_training = model.training
    model.eval()
    forward: Callable[[torch.Tensor], torch.Tensor] = model
    if model_name in MODELS and not data.in_memory:
        def forward(x: torch.Tensor) -> torch.Tensor:
            return model(x.flatten(1).float())
    try:
        output, target = data.outputs(forward, split)  # type: ignore[arg-type]
    finally:
        model.train(was_training)
    return (data_loss(data.task, output, target, loss),
            metric_value(metric, output, target, data.y_std, data.y_mean))


def optimizer_for(model: nn.Module, config: TrialConfig) -> torch.optim.Optimizer:
    """The config's optimizer, fused where torch has a fused kernel for it on this device.

    A fused step updates every parameter in one kernel instead of about ten per
    parameter: on a small model those calls, not the arithmetic, are the step's cost.
    It computes the same update (to float rounding), so a trial's curve is reproducible
    with either.
    """
    hyper = dict(config.optimizer_hyper)
    optimizer = build_optimizer(model.parameters(), config.optimizer, **hyper)
    if "fused" not in optimizer.defaults or "fused" in hyper:
        return optimizer
    try:
        return build_optimizer(model.parameters(), config.optimizer, **hyper, fused=True)
    except RuntimeError:  # no fused kernel on this device (e.g. Adagrad on CUDA)
        return optimizer


def _batch_sizes(n: int, batch_size: int) -> list[int]:
    """Batch sizes covering ``n`` samples; a last batch of one sample breaks batch norm,
    so it is folded into the previous one."""
    bs = min(batch_size, n)
    n_batches = max(1, n // bs if n % bs == 1 else math.ceil(n / bs))
    return [bs] * (n_batches - 1) + [n - bs * (n_batches - 1)]


@flush_denormals()
def train(model: nn.Module, data: Data, config: TrialConfig, *, metric: Metric,
          report: Report | None = None, resume: Checkpoint | None = None,
          checkpoint: Callable[[Checkpoint], None] | None = None,
          checkpoint_every: float = 30.0, precision: str = "fp32",
          loss: Loss | None = None) -> TrainResult:
    """Train ``model`` on ``data`` as ``config`` says; on return it holds its best epoch's weights.

    Early stopping watches the validation metric with ``config.patience`` and
    ``config.min_delta``; ``report`` is called after every epoch and stops training
    (``pruned``) when it returns True. A non-finite training loss stops it too
    (``diverged``).

    With ``checkpoint``, a :class:`Checkpoint` is handed to it after an epoch once
    ``checkpoint_every`` seconds have passed since the last one; ``resume`` continues
    from such a checkpoint, with the same result as an uninterrupted run.

    ``precision`` ``bf16`` or ``fp16`` runs the forward pass and the loss under
    ``torch.autocast`` in bfloat16 or float16 (mixed precision: the weights and the
    optimizer stay in float32); float16 scales the loss with a ``torch.amp.GradScaler``
    (a step whose gradients overflowed is skipped), whose state checkpoints carry.

    ``loss`` (a function of yours, ``loss(outputs, targets)``) replaces the built-in data
    loss; the penalties are still added. ``data`` is arrays on the device, or Datasets
    read batch by batch (:mod:`tuner.data.datasets`): both draw the same batches.
    """
    run = _Training(model, data, config, metric, precision, loss)
    first = 1 if resume is None else run.resume(resume)
    last_checkpoint = time.monotonic()
    for epoch in range(first, config.epochs + 1):
        metrics = run.epoch(epoch)
        run.result.history.append(metrics)
        if not math.isfinite(metrics.train_loss):
            run.result.diverged = True
            break
        run.keep_if_best(metrics)
        if run.stops(metrics, report):
            break
        if checkpoint is not None and time.monotonic() - last_checkpoint >= checkpoint_every:
            checkpoint(run.checkpoint(epoch))
            last_checkpoint = time.monotonic()
    run.restore_best()
    return run.result


class _Training:
    """One call of :func:`train`: what it builds once (``__init__``), and its steps.

    :func:`train` calls them in a fixed order; the random draws (batch order, dropout
    masks, augmentation, noise) happen in :meth:`epoch` only, so a run resumed from a
    checkpoint's random state draws what the uninterrupted one would have.
    """

    def __init__(self, model: nn.Module, data: Data, config: TrialConfig, metric: Metric,
                 precision: str, loss: Loss | None) -> None:
        half = half_dtype(precision)
        self.model = model
        self.data = data
        self.config = config
        self.metric = metric
        self.loss = loss
        self.weights = penalized_weights(model)
        self.optimizer = optimizer_for(model, config)
        self.scheduler = build_scheduler(self.optimizer, config.schedule,
                                         **dict(config.schedule_hyper))
        self.sizes = _batch_sizes(data.n_train, config.batch_size)
        # Datasets' items keep their shape and dtype; a built-in model reads them flat, as
        # floats. The augmentation warps flat images: a shaped batch gets its shape back.
        self.flat = not data.in_memory and config.model in MODELS
        self.shaped = not data.in_memory and not self.flat
        self.need_floats = self.shaped and (config.augment or bool(config.input_noise))
        # Decided once, not per batch.
        self.augment = data.image_shape if config.augment else None
        self.regularize = bool(config.l1 or config.l2)
        self.aux_weight = config.aux_weight if _uses_aux(config, data) else 0.0
        check_aux_head(model, config, data)
        self.aux_task = data.aux_task or "regression"
        device = data.device
        # Mixed precision: the forward pass and the loss under autocast.
        self.mixed: Callable[[], contextlib.AbstractContextManager[Any]] = (
            (lambda: torch.autocast(device.type, half)) if half is not None
            else contextlib.nullcontext)
        # float16's range needs loss scaling; bfloat16 has float32's.
        self.scaler = torch.amp.GradScaler(device.type) if half == torch.float16 else None
        # zero_grad(set_to_none=True) without its per-call profiler hooks.
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        # It reads the optimizer's state at its first step: after a resume, the loaded one.
        self.fast_step = FastStep(self.optimizer)
        self.result = TrainResult()
        self.best_state: dict[str, torch.Tensor] | None = None

    def resume(self, checkpoint: Checkpoint) -> int:
        """Continue from ``checkpoint``: the model, optimizer, schedule, loss scale, best
        epoch and random state it holds; the first epoch to train."""
        self.model.load_state_dict(checkpoint.model)
        self.optimizer.load_state_dict(checkpoint.optimizer)
        self.scheduler.load_state_dict(checkpoint.scheduler)
        self.result.history = list(checkpoint.history)
        self.result.best_epoch = checkpoint.best_epoch
        self.result.best_metric = checkpoint.best_metric
        self.best_state = checkpoint.best_state
        if self.scaler is not None and checkpoint.scaler is not None:
            self.scaler.load_state_dict(checkpoint.scaler)
        _set_rng_state(checkpoint.rng, self.data.device)
        return checkpoint.epoch + 1

    def epoch(self, epoch: int) -> EpochMetrics:
        """Train one epoch, evaluate it and step the schedule: its metrics."""
        start = time.perf_counter()
        self.model.train()
        lr = self.optimizer.param_groups[0]["lr"]
        loss_sum = self._train_batches(epoch)
        val_loss, val_metric = evaluate_split(self.model, self.data, "val", self.metric,
                                              self.loss, self.config.model)
        # The one host sync of the epoch.
        train_loss, val_loss_f, val_metric_f = torch.stack(
            [loss_sum / self.data.n_train, val_loss, val_metric]).tolist()
        step_scheduler(self.scheduler, val_metric_f)
        return EpochMetrics(epoch, train_loss, val_loss_f, val_metric_f, lr,
                            time.perf_counter() - start)

    def _train_batches(self, epoch: int) -> torch.Tensor:
        """One pass over the training split; the sum of its batches' data losses, on the
        device (no host sync per batch)."""
        data, config = self.data, self.config
        batches = data.train_batches(self.sizes, config.seed + epoch, aux=bool(self.aux_weight))
        loss_sum = torch.zeros((), device=data.device)
        # Dropout masks for the whole epoch, drawn in a few large draws.
        with epoch_masks(self.model, data.n_train):
            for xb, yb, ab in batches:
                xb = self._inputs(xb)
                batch_loss, total = self._losses(xb, yb, ab)
                loss_sum.add_(batch_loss.detach(), alpha=xb.shape[0])
                self._step(total)
        return loss_sum

    def _inputs(self, xb: torch.Tensor) -> torch.Tensor:
        """A batch's inputs as the model reads them: flattened, warped, noised."""
        if self.flat:
            xb = xb.flatten(1).float()
        elif self.need_floats and not xb.is_floating_point():
            raise TrialFailed(f"augment and input_noise warp and add to floating-point "
                              f"inputs, but the Dataset's items are {xb.dtype}: "
                              "convert them in its __getitem__")
        if self.augment is not None:
            warped = augment_images(xb, self.augment)  # flat images
            xb = warped.view_as(xb) if self.shaped else warped
        if self.config.input_noise:
            xb = add_input_noise(xb, self.config.input_noise)
        return xb

    def _losses(self, xb: torch.Tensor, yb: torch.Tensor,
                ab: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch's data loss (what the epoch's training loss reports) and the loss it
        steps on: with the auxiliary loss and the penalties."""
        model, task = self.model, self.data.task
        with self.mixed():
            if ab is None:
                batch_loss = data_loss(task, model(xb), yb, self.loss)
            else:
                output, aux_output = model.forward_with_aux(xb)  # type: ignore[operator]
                batch_loss = data_loss(task, output, yb, self.loss)
        total = batch_loss
        if ab is not None:
            total = total + self.aux_weight * loss_fn(self.aux_task, aux_output, ab)
        if self.regularize:
            total = total + penalty(self.weights, self.config.l1, self.config.l2)
        return batch_loss, total

    def _step(self, loss: torch.Tensor) -> None:
        """Backward and one optimizer step (scaled in float16), then the max-norm bound."""
        for p in self.params:
            p.grad = None
        if self.scaler is None:
            loss.backward()
            self.fast_step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if self.config.max_norm is not None:
            apply_max_norm(self.weights, self.config.max_norm)

    def keep_if_best(self, metrics: EpochMetrics) -> None:
        """Keep the epoch's weights when its validation metric beats the best kept so
        far by ``min_delta`` (or nothing is kept yet)."""
        best = None if self.best_state is None else self.result.best_metric
        if is_better(self.metric, metrics.val_metric, best, self.config.min_delta):
            self.result.best_epoch, self.result.best_metric = metrics.epoch, metrics.val_metric
            self.best_state = copy.deepcopy(self.model.state_dict())

    def stops(self, metrics: EpochMetrics, report: Report | None) -> bool:
        """Whether training stops after this epoch: ``report`` prunes it, or the best
        epoch is ``patience`` epochs old."""
        if report is not None and report(metrics):
            self.result.pruned = True
            return True
        patience = self.config.patience
        if patience is not None and metrics.epoch - self.result.best_epoch >= patience:
            self.result.stopped_early = True
            return True
        return False

    def checkpoint(self, epoch: int) -> Checkpoint:
        """Everything needed to continue after ``epoch`` (copies: training goes on)."""
        return Checkpoint(
            epoch, copy.deepcopy(self.model.state_dict()),
            copy.deepcopy(self.optimizer.state_dict()), self.scheduler.state_dict(),
            self.result.best_epoch, self.result.best_metric, self.best_state,
            list(self.result.history), _rng_state(self.data.device),
            None if self.scaler is None else self.scaler.state_dict())

    def restore_best(self) -> None:
        """Leave the model with its best epoch's weights."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
