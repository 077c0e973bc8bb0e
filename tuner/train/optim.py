"""Optimizers and learning-rate schedules by name, with torch's own argument names.

>>> import torch
>>> from tuner import build_optimizer, build_scheduler
>>> opt = build_optimizer([torch.zeros(2, requires_grad=True)], "momentum", lr=0.1)
>>> opt.param_groups[0]["momentum"]
0.9
>>> sched = build_scheduler(opt, "step", step_size=10, gamma=0.5)
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import lr_scheduler
from torch.optim.adam import adam

from tuner.errors import UsageError

# name -> (torch class, defaults the tuner sets, arguments the name does not take)
OPTIMIZER_CLASSES: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any],
                               tuple[str, ...]]] = {
    # Plain SGD has no momentum: that is what `momentum` is for.
    "sgd": (torch.optim.SGD, {}, ("momentum", "dampening", "nesterov")),
    "momentum": (torch.optim.SGD, {"momentum": 0.9}, ()),
    "adagrad": (torch.optim.Adagrad, {}, ()),
    "rmsprop": (torch.optim.RMSprop, {}, ()),
    "adam": (torch.optim.Adam, {}, ()),
    "adamw": (torch.optim.AdamW, {}, ()),
}

SCHEDULE_CLASSES: dict[str, tuple[type[Any], tuple[str, ...]]] = {
    # name -> (torch class, arguments that must be given)
    "none": (lr_scheduler.ConstantLR, ()),
    "step": (lr_scheduler.StepLR, ("step_size",)),
    "multistep": (lr_scheduler.MultiStepLR, ("milestones",)),
    "exponential": (lr_scheduler.ExponentialLR, ("gamma",)),
    "cosine": (lr_scheduler.CosineAnnealingLR, ("T_max",)),
    "plateau": (lr_scheduler.ReduceLROnPlateau, ()),
}

_NOT_HYPER = ("self", "params", "optimizer", "last_epoch", "verbose")


def _accepted(cls: type[Any], excluded: tuple[str, ...] = ()) -> list[str]:
    names = inspect.signature(cls.__init__).parameters
    return [n for n in names if n not in _NOT_HYPER + excluded
            and names[n].kind is not inspect.Parameter.VAR_KEYWORD]


def _check(kind: str, name: str, hyper: dict[str, Any], known: dict[str, Any],
           accepted: list[str]) -> None:
    if name not in known:
        raise UsageError(f"unknown {kind} {name!r}; expected one of: {', '.join(known)}")
    unknown = sorted(set(hyper) - set(accepted))
    if unknown:
        raise UsageError(f"{kind} {name!r} takes no hyper-parameter {unknown[0]!r}; "
                         f"it takes: {', '.join(accepted)}")


def build_optimizer(params: Iterable[Any], name: str, **hyper: Any) -> torch.optim.Optimizer:
    """A torch optimizer by name: ``sgd``, ``momentum`` (SGD with momentum, default 0.9),
    ``adagrad``, ``rmsprop``, ``adam`` or ``adamw``, with torch's hyper-parameter names."""
    entry = OPTIMIZER_CLASSES.get(name)
    accepted = _accepted(entry[0], entry[2]) if entry else []
    _check("optimizer", name, hyper, OPTIMIZER_CLASSES, accepted)
    cls, defaults, _ = OPTIMIZER_CLASSES[name]
    try:
        return cls(params, **{**defaults, **hyper})
    except ValueError as exc:
        raise UsageError(f"optimizer {name!r}: {exc}") from None


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, **hyper: Any) -> Any:
    """A torch learning-rate scheduler by name: ``none``, ``step``, ``multistep``,
    ``exponential``, ``cosine`` or ``plateau``, with torch's argument names.

    ``none`` is a scheduler that keeps the rate constant, so callers can always step.
    ``plateau`` must be stepped with the monitored metric: ``scheduler.step(value)``.
    """
    entry = SCHEDULE_CLASSES.get(name)
    accepted = _accepted(entry[0]) if entry and name != "none" else []
    _check("schedule", name, hyper, SCHEDULE_CLASSES, accepted)
    cls, required = SCHEDULE_CLASSES[name]
    missing = [r for r in required if r not in hyper]
    if missing:
        raise UsageError(f"schedule {name!r} needs {', '.join(missing)}")
    if name == "none":
        return lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    try:
        return cls(optimizer, **hyper)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"schedule {name!r}: {exc}") from None


def step_scheduler(scheduler: Any, metric: float | torch.Tensor) -> None:
    """Advance a schedule by one epoch; ``plateau`` watches the validation metric."""
    if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
        scheduler.step(metric)
    else:
        scheduler.step()


class FastStep:
    """Calls that step an optimizer exactly as ``optimizer.step()`` does, cheaper.

    For Adam and AdamW, torch's own functional ``adam`` is called on the optimizer's own
    state, without what ``Optimizer.step`` does around it on every call (hooks,
    profiling, re-gathering every parameter's state into lists): on the small models the
    tuner trains that is a noticeable share of a training step. The first call, any call
    where a parameter has no gradient, and every other optimizer go through
    ``optimizer.step()``. The state stays the optimizer's, so ``state_dict`` (and a
    checkpoint) is what ``optimizer.step()`` would have left.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        group = optimizer.param_groups[0]
        self.eligible = (type(optimizer) in (torch.optim.Adam, torch.optim.AdamW)
                         and len(optimizer.param_groups) == 1
                         and "decoupled_weight_decay" in group  # torch's merged Adam(W)
                         and not (group["amsgrad"] or group["differentiable"]
                                  or group["capturable"])
                         and not any(torch.is_complex(p) for p in group["params"]))
        self.params: list[torch.Tensor] = list(group["params"])
        self._state: tuple[list[torch.Tensor], ...] | None = None

    def __call__(self) -> None:
        grads = [p.grad for p in self.params]
        complete = all(g is not None for g in grads)
        if self._state is None or not complete:
            self.optimizer.step()
            if self.eligible and self._state is None and complete:
                states = [self.optimizer.state[p] for p in self.params]
                self._state = tuple([s[k] for s in states]
                                    for k in ("exp_avg", "exp_avg_sq", "step"))
            return
        group = self.optimizer.param_groups[0]
        exp_avgs, exp_avg_sqs, steps = self._state
        with torch.no_grad():  # as Optimizer.step: the update is no part of the graph
            adam(self.params, grads, exp_avgs, exp_avg_sqs, [], steps,  # type: ignore[arg-type]
                 amsgrad=False, has_complex=False, beta1=group["betas"][0],
                 beta2=group["betas"][1], lr=group["lr"], weight_decay=group["weight_decay"],
                 eps=group["eps"], maximize=group["maximize"], foreach=group["foreach"],
                 capturable=False, differentiable=False, fused=group["fused"],
                 decoupled_weight_decay=group["decoupled_weight_decay"])
