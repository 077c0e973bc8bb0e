"""One fused group: the batched model, optimizer, schedule and per-member knobs of
trials that share a :func:`group_key`, trained one epoch at a time.

A group draws one batch permutation per epoch from its own generator and every member
sees those batches; dropout, input noise and augmentation are drawn for the whole group
from a second generator (on a CPU, dropout's uniform bits from xorshift lanes it seeds),
so the batch order never depends on who is in the group.
Members leave (compaction, :meth:`Group.select`) and join (:meth:`Group.join`) between
epochs; every per-member tensor moves with them.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tuner.data.builtin import Splits
from tuner.fused._metrics import evaluate_members
from tuner.fused._model import FusedMLP, add_input_noise
from tuner.fused._optim import (
    FAMILIES,
    FusedOptimizer,
    MemberLossScale,
    add_penalty_grad_,
    apply_max_norm_,
)
from tuner.fused._schedule import FusedSchedule
from tuner.train.config import TrialConfig
from tuner.train.dropout import RandomWords, Source
from tuner.train.loop import Checkpoint, EpochMetrics, TrainResult, build_for, optimizer_for
from tuner.train.metrics import Metric
from tuner.train.optim import build_scheduler, step_scheduler
from tuner.train.regularizers import augment_images


@dataclass
class MemberResult(TrainResult):
    """A member's :class:`tuner.train.loop.TrainResult` plus its weights as an MLP state_dict:
    the best epoch's, or the last epoch's when no epoch was best (e.g. diverged)."""

    state_dict: dict[str, Tensor] = field(default_factory=dict)


def group_key(config: TrialConfig) -> tuple[Any, ...]:
    """What must be equal for two configs to train in one batched model.

    Shapes (width, depth, batch size), code paths (batch norm, augmentation) and the
    optimizer family; the last item is the dropout kind, or None without dropout, which
    fits a group of either kind. Schedules are per member and not part of the key.
    """
    kind = config.dropout_kind if config.dropout > 0 else None
    return (config.model, config.hidden, config.layers, config.batch_size, config.batchnorm,
            config.augment, FAMILIES[config.optimizer], kind)


def fits(key: tuple[Any, ...], other: tuple[Any, ...]) -> bool:
    return key[:-1] == other[:-1] and (key[-1] is None or other[-1] is None
                                       or key[-1] == other[-1])


def joint_key(keys: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """The key of a set of fitting keys: the dropout kind of any member that has one."""
    return next((k for k in keys if k[-1] is not None), keys[0])


@dataclass
class Member:
    id: int
    config: TrialConfig
    result: MemberResult = field(default_factory=MemberResult)
    epoch: int = 0  # epochs done
    has_best: bool = False


def _build(config: TrialConfig, data: Splits) -> torch.nn.Module:
    """The member's MLP, initialized exactly as the sequential objective initializes it."""
    with torch.random.fork_rng(devices=[]):  # leave the caller's generator alone
        # The CPU generator is the one initialization draws from (build_for initializes
        # on the CPU, then moves the model); seed_everything seeds it the same way.
        torch.default_generator.manual_seed(config.seed)
        model = build_for(config, data)
    return model.to(data.x_train.dtype)


class Group:
    """One batched model and everything per member that goes with it."""

    def __init__(self, members: list[Member], data: Splits, seed: int,
                 compute: torch.dtype | None = None) -> None:
        self.members: list[Member] = []
        self.compute = compute  # the forward/backward dtype (None: the data's)
        self.key: tuple[Any, ...] = group_key(members[0].config)
        # Shapes and code paths, equal for every member (they are in the key).
        self.batch_size = members[0].config.batch_size
        self.augment = members[0].config.augment and data.image_shape is not None
        device = data.x_train.device
        self.order_generator = torch.Generator(device).manual_seed(seed)
        # Noise has its own stream, so the batch order never depends on who is in the group.
        self.noise_generator = torch.Generator(device).manual_seed(seed + 1_000_003)
        # Dropout masks take their uniform bits from xorshift lanes seeded by it: on a
        # CPU, torch's mt19937 draws one word after another and was most of a mask's
        # time, where the lanes step together (a GPU's Philox is fast).
        self.mask_source: Source = (RandomWords(self.noise_generator)
                                    if device.type == "cpu" else self.noise_generator)
        self.checkpointed = time.monotonic()  # when the members were last checkpointed
        self._add(members, data)

    # -- building, joining, compaction ----------------------------------------------------

    def _parts(self, members: list[Member], data: Splits) -> dict[str, Any]:
        configs = [m.config for m in members]
        model = FusedMLP.from_members([_build(c, data) for c in configs], self.compute)
        optimizer = FusedOptimizer([c.optimizer for c in configs],
                                   [dict(c.optimizer_hyper) for c in configs], model.params)
        schedule = FusedSchedule([c.schedule for c in configs],
                                 [dict(c.schedule_hyper) for c in configs],
                                 optimizer.hyper["lr"])

        def column(values: list[float]) -> Tensor:
            return torch.tensor(values, dtype=torch.float64, device=model.params.device)

        knobs = {"l1": column([c.l1 for c in configs]), "l2": column([c.l2 for c in configs]),
                 "noise": column([c.input_noise for c in configs]),
                 "max_norm": column([math.inf if c.max_norm is None else c.max_norm
                                     for c in configs])}
        # float16 passes need loss scaling (bfloat16 has float32's range).
        scaler = (MemberLossScale(len(configs), model.params.device)
                  if self.compute == torch.float16 else None)
        return {"model": model, "optimizer": optimizer, "schedule": schedule, "knobs": knobs,
                "scaler": scaler}

    def _add(self, members: list[Member], data: Splits) -> None:
        parts = self._parts(members, data)
        if not self.members:
            self.model: FusedMLP = parts["model"]
            self.optimizer: FusedOptimizer = parts["optimizer"]
            self.schedule: FusedSchedule = parts["schedule"]
            self.knobs: dict[str, Tensor] = parts["knobs"]
            self.scaler: MemberLossScale | None = parts["scaler"]
            self.best_params = self.model.params.clone()
            self.best_buffers = self.model.buffers.clone()
            self.best_batches = self.model.batches.clone()
        else:
            self.model.extend(parts["model"])
            self.optimizer.extend(parts["optimizer"])
            self.schedule.extend(parts["schedule"])
            self.knobs = {k: torch.cat([v, parts["knobs"][k]]) for k, v in self.knobs.items()}
            if self.scaler is not None:
                self.scaler.extend(parts["scaler"])
            self.best_params = torch.cat([self.best_params, parts["model"].params])
            self.best_buffers = torch.cat([self.best_buffers, parts["model"].buffers])
            self.best_batches = torch.cat([self.best_batches, parts["model"].batches])
        self.members += members
        keys = [group_key(m.config) for m in self.members]
        self.key = joint_key(keys)
        self._refresh()

    def join(self, members: list[Member], data: Splits) -> None:
        """New trials take free slots; they start at epoch 1 with fresh optimizer state."""
        self._add(members, data)

    def select(self, keep: list[int]) -> None:
        """Compaction: keep the members at positions ``keep``, drop the rest's slices."""
        index = torch.tensor(keep, dtype=torch.int64, device=self.model.params.device)
        self.model.select(index)
        self.optimizer.select(index)
        self.schedule.select(index)
        self.knobs = {k: v[index] for k, v in self.knobs.items()}
        if self.scaler is not None:
            self.scaler.select(index)
        self.best_params = self.best_params[index]
        self.best_buffers = self.best_buffers[index]
        self.best_batches = self.best_batches[index]
        self.members = [self.members[i] for i in keep]
        self._refresh()

    def _refresh(self) -> None:
        """Per-member knobs that every member has at zero are skipped in the hot loop."""
        knobs = self.knobs
        self.l1 = knobs["l1"] if bool((knobs["l1"] != 0).any()) else None
        self.l2 = knobs["l2"] if bool((knobs["l2"] != 0).any()) else None
        self.noise = knobs["noise"] if bool((knobs["noise"] != 0).any()) else None
        finite = bool(torch.isfinite(knobs["max_norm"]).any())
        self.max_norm = knobs["max_norm"] if finite else None

    # -- one epoch ---------------------------------------------------------------------

    def train_epoch(self, data: Splits, metric: Metric) -> list[EpochMetrics]:
        """Train every member one epoch; return their metrics (one host sync)."""
        start = time.perf_counter()
        x, y = data.x_train, data.y_train
        n, bs = x.shape[0], min(self.batch_size, x.shape[0])
        # As in tuner.train.loop: a last batch of one sample is folded into the previous one.
        n_batches = max(1, n // bs if n % bs == 1 else math.ceil(n / bs))
        model, k = self.model, self.model.size
        lr_host = self.schedule.lr
        lr = lr_host.to(x.device)
        n_weights = model.layout.n_weights
        scaler = self.scaler  # float16's loss scales, else None
        order = torch.randperm(n, generator=self.order_generator, device=x.device)
        loss_sum = torch.zeros(k, dtype=x.dtype, device=x.device)
        for i in range(n_batches):
            idx = order[i * bs:] if i == n_batches - 1 else order[i * bs:(i + 1) * bs]
            xb, yb = x[idx], y[idx]
            if self.augment:
                assert data.image_shape is not None
                xb = augment_images(xb.expand(k, *xb.shape).reshape(-1, xb.shape[1]),
                                    data.image_shape).view(k, -1, xb.shape[1])
            if self.noise is not None:
                xb = add_input_noise(xb, self.noise, self.noise_generator)
            losses = model.train_step(xb, yb, data.task, self.mask_source,
                                      None if scaler is None else scaler.scale)
            loss_sum.add_(losses, alpha=idx.shape[0])
            ok = None if scaler is None else scaler.unscale_(model.grad)
            if self.l1 is not None or self.l2 is not None:
                l1, l2 = self.l1, self.l2
                if ok is not None:  # a member skipping this step must hand on a zero row
                    l1 = None if l1 is None else l1 * ok.to(l1.dtype)
                    l2 = None if l2 is None else l2 * ok.to(l2.dtype)
                add_penalty_grad_(model.grad[:, :n_weights], model.params[:, :n_weights],
                                  l1, l2)
            self.optimizer.step(model.params, model.grad, lr, ok)
            if scaler is not None and ok is not None:
                scaler.update(ok)
            if self.max_norm is not None:
                apply_max_norm_(model.weights(), self.max_norm)
        model.batches += n_batches

        val_loss, val_metric = evaluate_members(model, data.x_val, data.y_val, data.task,
                                                metric, data.y_std)
        # The one host sync of the epoch, for all members.
        # (float64 when the metric is: an accuracy's hits / n stays exact.)
        rows = torch.stack([loss_sum / n, val_loss.to(x.dtype), val_metric.to(
            torch.promote_types(x.dtype, val_metric.dtype))])
        train_loss, val_loss_h, val_metric_h = rows.double().tolist()
        self.schedule.step(torch.tensor(val_metric_h, dtype=torch.float64))
        seconds = time.perf_counter() - start
        return [EpochMetrics(m.epoch + 1, train_loss[j], val_loss_h[j], val_metric_h[j],
                             float(lr_host[j]), seconds) for j, m in enumerate(self.members)]

    def snapshot(self, positions: list[int]) -> None:
        """Remember the current weights of the members at ``positions`` as their best."""
        index = torch.tensor(positions, dtype=torch.int64, device=self.model.params.device)
        self.best_params[index] = self.model.params[index].detach()
        self.best_buffers[index] = self.model.buffers[index]
        self.best_batches[index] = self.model.batches[index]

    def checkpoint(self, position: int) -> Checkpoint:
        """The member at ``position`` as the sequential engine checkpoints a trial
        (:class:`tuner.train.loop.Checkpoint`), after its last finished epoch.

        The weights, the optimizer state and the best epoch's weights are the member's
        rows, in torch's formats: the state of the optimizer :func:`tuner.train.loop.train`
        builds for the config, and its scheduler replayed over the member's epochs (the
        fused schedules follow torch's). The random state is the group's batch order,
        so a trial resumed from it by :func:`tuner.train.loop.train` draws the batches the
        group would have drawn next.
        """
        member, model = self.members[position], self.model
        mlp = model.member(position)
        optimizer = optimizer_for(mlp, member.config)
        fused = self.optimizer
        step = float(fused.steps[position])
        for name, param in mlp.named_parameters():
            slot = model.layout.params[name]
            state: dict[str, Any] = {
                key: rows[position, slot.start:slot.end].view(slot.shape).clone()
                for key, rows in fused.state.items()}
            if "momentum_buffer" in state and (fused.hyper["momentum"][position] == 0
                                               or (fused.family == "sgd" and step == 0)):
                # torch's SGD keeps none without momentum, nor before its first step
                # (which starts it as a copy of the gradient; float16's skips can leave a
                # member at step 0).
                del state["momentum_buffer"]
            if fused.family != "sgd":
                state["step"] = torch.tensor(step, dtype=torch.float32)
            optimizer.state[param] = state
        scheduler = build_scheduler(optimizer, member.config.schedule,
                                    **dict(member.config.schedule_hyper))
        with warnings.catch_warnings():  # the replay steps no optimizer, on purpose
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler")
            for row in member.result.history:
                step_scheduler(scheduler, row.val_metric)
        best = (model.state_dict(position, self.best_params, self.best_buffers,
                                 self.best_batches) if member.has_best else None)
        rng = {"cpu": torch.get_rng_state()}
        device = model.params.device
        rng["cuda" if device.type == "cuda" else "cpu"] = self.order_generator.get_state()
        result = member.result
        return Checkpoint(member.epoch, mlp.state_dict(), optimizer.state_dict(),
                          scheduler.state_dict(), result.best_epoch, result.best_metric,
                          best, list(result.history), rng,
                          None if self.scaler is None else self.scaler.state(position))

    def export(self, position: int) -> dict[str, Tensor]:
        """A finished member's weights as an MLP state_dict: its best epoch's if it had one."""
        member = self.members[position]
        if not member.has_best:
            return self.model.state_dict(position)
        return self.model.state_dict(position, self.best_params, self.best_buffers,
                                     self.best_batches)
