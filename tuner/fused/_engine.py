"""Train a population of trials at once, as few batched models as their shapes allow.

Configs are grouped by what changes tensor shapes or code paths (:func:`group_key`);
each group trains as one :class:`FusedMLP` whose every other knob (learning rate and
schedule, l1, l2, dropout rate, input noise, max-norm, optimizer hyper-parameters) is a
per-member tensor. Each member stays a trial of its own: its own per-epoch metrics,
report (pruning), early stopping and best weights. Members that finish are cut out of
the batch (compaction), and new trials may be handed in for the freed slots. The
caller takes part through :class:`PopulationHooks`; like :func:`tuner.train.loop.train`,
the engine knows nothing of Optuna or SQL.

Differences from sequential runs of the same configs, by design:

* Batch order: a group draws one permutation per epoch and every member sees the same
  batches; a sequential trial draws its own from its seed. The order comes from a
  generator seeded with ``seed + g`` for the g-th group formed (0, 1, ...).
* Randomness (dropout, input noise, augmentation): drawn for the whole group at once,
  so a member's draws depend on the population around it. Initial weights do not:
  each member is built under its own seed exactly as the sequential objective does.
* ``EpochMetrics.seconds`` is the wall time of the group's epoch.

>>> from tuner.train.config import TrialConfig
>>> from tuner.data.builtin import load_splits
>>> from tuner.train.metrics import METRICS
>>> data = load_splits("iris", seed=0)
>>> configs = [TrialConfig(epochs=2, seed=s, hidden=8) for s in range(3)]
>>> results = train_population(configs, data, metric=METRICS["accuracy"])
>>> [len(r.history) for r in results]
[2, 2, 2]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tuner.data.builtin import Splits
from tuner.fused._group import Group, Member, MemberResult, fits, group_key, joint_key
from tuner.fused._optim import resolve_hyper
from tuner.fused._schedule import resolve_schedule
from tuner.train.config import TrialConfig
from tuner.train.device import flush_denormals
from tuner.train.loop import Checkpoint, EpochMetrics, half_dtype
from tuner.train.metrics import Metric, is_better

__all__ = ["MemberResult", "PopulationHooks", "group_key", "train_population",
           "unsupported_reason"]


@dataclass(frozen=True)
class PopulationHooks:
    """How :func:`train_population` talks to its caller: every hook is optional.

    ``report(rows)``
        After each epoch of a group, with every member it trained, at once:
        ``[(member id, metrics)]``; returns the ids of those to prune.
    ``finish(done)``
        The members a group finished at one epoch, at once: ``[(member id, result)]``,
        each ``result`` holding the member's best weights (``state_dict``). Once handed
        over, the weights are dropped: the results :func:`train_population` returns keep
        their history only (a long run that refills its slots would otherwise hold the
        weights of every member it ever trained). Without this hook they keep them.
    ``refill(free)``
        After each round of epochs where fewer than ``population`` members train: up to
        ``free`` new configs (or none); they join a group of their shape or start a new
        one.
    ``checkpoint(member id, checkpoint)``
        Each member of a group after an epoch, once ``checkpoint_every`` seconds have
        passed since the group's last (see :meth:`Group.checkpoint`: the sequential
        engine resumes from it).

    >>> hooks = PopulationHooks(report=lambda rows: [i for i, m in rows if m.epoch == 3])
    """

    report: Callable[[Sequence[tuple[int, EpochMetrics]]], Collection[int]] | None = None
    finish: Callable[[Sequence[tuple[int, MemberResult]]], None] | None = None
    refill: Callable[[int], Sequence[TrialConfig]] | None = None
    checkpoint: Callable[[int, Checkpoint], None] | None = None
    checkpoint_every: float = 30.0


def compute_dtype(precision: str, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype of the passes for ``precision``; None: the data's own (``fp32``)."""
    compute = half_dtype(precision)
    return compute if compute not in (None, dtype) else None


def unsupported_reason(config: TrialConfig) -> str | None:
    """Why ``config`` cannot be trained fused (then train it sequentially), or None."""
    if config.model != "mlp":
        return f"model {config.model!r} is not fused (only 'mlp' is)"
    try:
        resolve_hyper(config.optimizer, dict(config.optimizer_hyper))
        resolve_schedule(config.schedule, dict(config.schedule_hyper))
    except ValueError as exc:
        return str(exc)
    return None


def _partition(members: list[Member]) -> list[list[Member]]:
    """Members grouped by :func:`group_key`; dropout-free ones join a fitting group."""
    groups: dict[tuple[Any, ...], list[Member]] = {}
    for m in members:
        groups.setdefault(group_key(m.config), []).append(m)
    for key in [k for k in groups if k[-1] is None]:
        partner = next((k for k in groups if k[-1] is not None and fits(key, k)), None)
        if partner is not None:
            groups[partner] = sorted(groups[partner] + groups.pop(key), key=lambda m: m.id)
    return list(groups.values())


@flush_denormals()
def train_population(configs: Sequence[TrialConfig], data: Splits, *, metric: Metric,
                     hooks: PopulationHooks | None = None, population: int | None = None,
                     seed: int = 0, precision: str = "fp32") -> list[MemberResult]:
    """Train every config as a member of a fused population; return results by member id.

    Member ids are positions in ``configs``, then ``len(configs)``, ... for refilled
    trials. ``hooks`` (:class:`PopulationHooks`) report each epoch (and prune), take the
    members that finish, refill their slots and checkpoint; early stopping and
    divergence follow :func:`tuner.train.loop.train`. ``population`` is the most
    members trained at once (default: ``len(configs)``). Groups take turns one epoch at
    a time, so every trial advances at the same pace. ``precision`` ``bf16`` or ``fp16``
    runs the forward and backward passes in bfloat16 or float16 on a copy of the float32
    weights (mixed precision; float16 with a loss scale per member, see
    :class:`~tuner.fused._optim.MemberLossScale`).

    Raises ``ValueError`` for a config that :func:`unsupported_reason` rejects.
    """
    if hooks is None:
        hooks = PopulationHooks()
    population = max(population or 0, len(configs))
    compute = compute_dtype(precision, data.x_train.dtype)
    results: list[MemberResult] = []
    groups: list[Group] = []
    formed = 0

    def admit(new: Sequence[TrialConfig]) -> None:
        nonlocal formed
        members = []
        for config in new:
            reason = unsupported_reason(config)
            if reason is not None:
                raise ValueError(f"config {len(results)} cannot be fused: {reason}")
            members.append(Member(len(results), config))
            results.append(members[-1].result)
        for part in _partition(members):
            key = joint_key([group_key(m.config) for m in part])
            home = next((g for g in groups if fits(key, g.key)), None)
            if home is not None:
                home.join(part, data)
            else:
                groups.append(Group(part, data, seed + formed, compute))
                formed += 1

    admit(configs)
    while groups:
        for group in list(groups):
            _finish_epoch(group, group.train_epoch(data, metric), metric, hooks)
            if not group.members:
                groups.remove(group)
            elif hooks.checkpoint is not None and (
                    time.monotonic() - group.checkpointed >= hooks.checkpoint_every):
                for position, member in enumerate(group.members):
                    hooks.checkpoint(member.id, group.checkpoint(position))
                group.checkpointed = time.monotonic()
        active = sum(len(g.members) for g in groups)
        if hooks.refill is not None and active < population:
            new = list(hooks.refill(population - active))[:population - active]
            if new:
                admit(new)
    return results


def _finish_epoch(group: Group, rows: list[EpochMetrics], metric: Metric,
                  hooks: PopulationHooks) -> None:
    """Per-member bookkeeping after an epoch, in :func:`tuner.train.loop.train`'s order: a
    diverged member stops unreported; the others are reported (all at once), then pruned,
    stopped early or finished."""
    improved, finished, reported = [], [], []
    for position, (member, row) in enumerate(zip(group.members, rows, strict=True)):
        result = member.result
        member.epoch += 1
        result.history.append(row)
        if not math.isfinite(row.train_loss):
            result.diverged = True
            finished.append(position)
            continue
        best = result.best_metric if member.has_best else None
        if is_better(metric, row.val_metric, best, member.config.min_delta):
            result.best_epoch, result.best_metric = member.epoch, row.val_metric
            member.has_best = True
            improved.append(position)
        reported.append(position)
    pruned = set() if hooks.report is None else set(hooks.report(
        [(group.members[p].id, rows[p]) for p in reported]))
    for position in reported:
        member = group.members[position]
        result, config = member.result, member.config
        if member.id in pruned:
            result.pruned = True
        elif config.patience is not None and member.epoch - result.best_epoch >= config.patience:
            result.stopped_early = True
        elif member.epoch < config.epochs:
            continue
        finished.append(position)
    if improved:
        group.snapshot(improved)
    done = []
    for position in sorted(finished):
        member = group.members[position]
        member.result.state_dict = group.export(position)
        done.append(member)
    if hooks.finish is not None and done:
        hooks.finish([(member.id, member.result) for member in done])
        for member in done:
            member.result.state_dict = {}  # handed over (see PopulationHooks.finish)
    if finished:
        group.select([p for p in range(len(group.members)) if p not in set(finished)])
