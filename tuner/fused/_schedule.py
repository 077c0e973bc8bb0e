"""Fused learning-rate schedules: K members' rates advanced in one vectorized step.

Each member has its own schedule kind (``none``, ``step``, ``multistep``,
``exponential``, ``cosine``, ``plateau``) and parameters, so members with different
schedules share one fused group. Every kind follows torch's chainable ``get_lr`` form
(the new rate is computed from the current one, as ``StepLR``, ``CosineAnnealingLR``
and friends do when stepped once per epoch), and ``plateau`` follows
``ReduceLROnPlateau`` including its ``eps`` rule; ``tests/test_fused_optim.py`` checks
each against torch member by member.

The rates live on the host in float64: the schedule is stepped once per epoch, after
the epoch's one host sync, and the engine copies the ``[K]`` rates to the device.

>>> import torch
>>> s = FusedSchedule(["step", "exponential"], [{"step_size": 1, "gamma": 0.5},
...                                              {"gamma": 0.1}], torch.tensor([1.0, 1.0]))
>>> s.step(torch.zeros(2)).tolist()
[0.5, 0.1]
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from tuner.train.optim import SCHEDULE_CLASSES

KINDS = ("none", "step", "multistep", "exponential", "cosine", "plateau")
_F64 = torch.float64

# The per-member fields, with the value a member of another kind carries (unused).
_FIELDS: dict[str, float] = {
    "gamma": 1.0, "step_size": 1.0, "T_max": 1.0, "eta_min": 0.0,  # step .. cosine
    "factor": 0.1, "patience": 0.0, "threshold": 0.0, "cooldown": 0.0, "min_lr": 0.0,
    "eps": 0.0, "mode_max": 0.0, "threshold_abs": 0.0,  # plateau
}


_REQUIRED = {"step": ("step_size",), "multistep": ("milestones",), "exponential": ("gamma",),
             "cosine": ("T_max",), "plateau": ()}


def _torch_arguments(kind: str) -> dict[str, Any]:
    """The arguments torch's class for ``kind`` accepts, with their defaults (or empty)."""
    cls, _ = SCHEDULE_CLASSES[kind]
    signature = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in signature.items()
            if k not in ("self", "optimizer", "last_epoch", "verbose")}


def resolve_schedule(kind: str, hyper: Mapping[str, Any]) -> tuple[dict[str, float], list[int]]:
    """One member's fields and milestones; ``ValueError`` for what the tuner would reject."""
    if kind not in KINDS:
        raise ValueError(f"unknown schedule {kind!r}; expected one of: {', '.join(KINDS)}")
    if kind == "none":
        if hyper:
            raise ValueError(f"schedule 'none' takes no hyper-parameters, but got {dict(hyper)}")
        return dict(_FIELDS), []
    accepted = _torch_arguments(kind)
    unknown = sorted(set(hyper) - set(accepted))
    if unknown:
        raise ValueError(f"schedule {kind!r} takes no hyper-parameter {unknown[0]!r}")
    missing = [r for r in _REQUIRED[kind] if r not in hyper]
    if missing:
        raise ValueError(f"schedule {kind!r} needs {', '.join(missing)}")
    values = {**accepted, **hyper}
    fields = dict(_FIELDS)
    for key in ("gamma", "step_size", "T_max", "eta_min", "factor", "patience", "threshold",
                "cooldown", "eps"):
        if key in values:
            fields[key] = float(values[key])
    if kind in ("step", "cosine") and not fields["step_size"] >= 1 <= fields["T_max"]:
        raise ValueError(f"schedule {kind!r}: step_size and T_max must be >= 1, but got "
                         f"(step_size={fields['step_size']}, T_max={fields['T_max']})")
    if kind == "plateau":
        if isinstance(values["min_lr"], (list, tuple)):
            raise ValueError("the fused plateau schedule takes one min_lr per member")
        if values["mode"] not in ("min", "max") or values["threshold_mode"] not in ("rel", "abs"):
            raise ValueError(f"plateau: mode must be min/max and threshold_mode rel/abs, but "
                             f"got ({values['mode']!r}, {values['threshold_mode']!r})")
        if not fields["factor"] < 1.0:
            raise ValueError(f"plateau: `factor < 1` must hold, but got factor={fields['factor']}")
        fields["min_lr"] = float(values["min_lr"])
        fields["mode_max"] = float(values["mode"] == "max")
        fields["threshold_abs"] = float(values["threshold_mode"] == "abs")
    milestones = [int(m) for m in values.get("milestones", [])]
    return fields, milestones


class FusedSchedule:
    """The learning rates of K members, each under its own schedule kind and parameters.

    ``lr`` holds the rate each member uses in the coming epoch (float64, on the host).
    :meth:`step` advances every member by one epoch; ``plateau`` members watch the
    ``[K]`` metric passed to it.
    """

    def __init__(self, kinds: Sequence[str], hypers: Sequence[Mapping[str, Any]],
                 base_lrs: Tensor) -> None:
        if not len(kinds) == len(hypers) == base_lrs.shape[0]:
            raise ValueError(f"`len(kinds) == len(hypers) == len(base_lrs)` must hold, but "
                             f"got ({len(kinds)}, {len(hypers)}, {base_lrs.shape[0]})")
        rows = [resolve_schedule(k, h) for k, h in zip(kinds, hypers, strict=True)]
        k = len(rows)
        width = max([len(m) for _, m in rows] + [1])
        milestones = torch.full((k, width), -1, dtype=torch.int64)
        for i, (_, ms) in enumerate(rows):
            milestones[i, :len(ms)] = torch.tensor(ms, dtype=torch.int64)
        self.kind = torch.tensor([KINDS.index(x) for x in kinds], dtype=torch.int64)
        self.fields = {f: torch.tensor([r[f] for r, _ in rows], dtype=_F64) for f in _FIELDS}
        self.milestones = milestones
        self.lr = base_lrs.detach().to("cpu", _F64).clone()
        self.base_lr = self.lr.clone()
        self.last_epoch = torch.zeros(k, dtype=torch.int64)
        # ReduceLROnPlateau's running state; best starts at the worse end of the mode.
        mode_max = self.fields["mode_max"].bool()
        self.best = torch.where(mode_max, -math.inf, math.inf).to(_F64)
        self.num_bad = torch.zeros(k, dtype=torch.int64)
        self.cooldown_counter = torch.zeros(k, dtype=torch.int64)

    def _is(self, name: str) -> Tensor:
        return self.kind == KINDS.index(name)

    def step(self, metrics: Tensor) -> Tensor:
        """Advance one epoch and return the new ``[K]`` rates (also left in ``lr``)."""
        f, lr = self.fields, self.lr
        metrics = metrics.detach().to("cpu", _F64)
        epoch = self.last_epoch + 1
        e = epoch.to(_F64)
        new = lr.clone()

        hit = self._is("step") & (torch.remainder(epoch, f["step_size"].long()) == 0)
        new = torch.where(hit, lr * f["gamma"], new)

        # A milestone listed n times multiplies by gamma**n, as torch's Counter does.
        count = (self.milestones == epoch.unsqueeze(1)).sum(1)
        hit = self._is("multistep") & (count > 0)
        new = torch.where(hit, lr * f["gamma"] ** count.to(_F64), new)

        new = torch.where(self._is("exponential"), lr * f["gamma"], new)

        t_max, eta_min = f["T_max"], f["eta_min"]
        restart = torch.remainder(epoch - 1 - t_max.long(), 2 * t_max.long()) == 0
        up = lr + (self.base_lr - eta_min) * (1 - torch.cos(math.pi / t_max)) / 2
        ratio = (1 + torch.cos(math.pi * e / t_max)) / (1 + torch.cos(math.pi * (e - 1) / t_max))
        cosine = torch.where(restart, up, ratio * (lr - eta_min) + eta_min)
        new = torch.where(self._is("cosine"), cosine, new)

        new = self._plateau(metrics, new)
        self.last_epoch = epoch
        self.lr = new
        return new

    def _plateau(self, metrics: Tensor, new: Tensor) -> Tensor:
        """``ReduceLROnPlateau.step`` for every plateau member at once."""
        f, plateau = self.fields, self._is("plateau")
        mode_max, absolute = f["mode_max"].bool(), f["threshold_abs"].bool()
        threshold = f["threshold"]
        better = torch.where(
            mode_max,
            torch.where(absolute, metrics > self.best + threshold,
                        metrics > self.best * (threshold + 1.0)),
            torch.where(absolute, metrics < self.best - threshold,
                        metrics < self.best * (1.0 - threshold)))
        self.best = torch.where(plateau & better, metrics, self.best)
        num_bad = torch.where(better, 0, self.num_bad + 1)
        in_cooldown = self.cooldown_counter > 0
        cooldown_counter = torch.where(in_cooldown, self.cooldown_counter - 1,
                                       self.cooldown_counter)
        num_bad = torch.where(in_cooldown, 0, num_bad)
        reduce = plateau & (num_bad > f["patience"].long())
        reduced = torch.maximum(self.lr * f["factor"], f["min_lr"])
        # torch leaves the rate alone when the cut would be smaller than eps.
        new = torch.where(reduce & (self.lr - reduced > f["eps"]), reduced, new)
        self.cooldown_counter = torch.where(
            plateau, torch.where(reduce, f["cooldown"].long(), cooldown_counter),
            self.cooldown_counter)
        self.num_bad = torch.where(plateau, torch.where(reduce, 0, num_bad), self.num_bad)
        return new

    # -- the member axis -----------------------------------------------------------------

    def _tensors(self) -> dict[str, Tensor]:
        return {"kind": self.kind, "milestones": self.milestones, "lr": self.lr,
                "base_lr": self.base_lr, "last_epoch": self.last_epoch, "best": self.best,
                "num_bad": self.num_bad, "cooldown_counter": self.cooldown_counter,
                **{f"field:{k}": v for k, v in self.fields.items()}}

    def _set(self, tensors: dict[str, Tensor]) -> None:
        self.fields = {k[6:]: v for k, v in tensors.items() if k.startswith("field:")}
        for key, value in tensors.items():
            if not key.startswith("field:"):
                setattr(self, key, value)

    def select(self, index: Tensor) -> None:
        """Keep only the members at ``index``."""
        index = index.to("cpu")
        self._set({k: v[index] for k, v in self._tensors().items()})

    def extend(self, other: FusedSchedule) -> None:
        """Append ``other``'s members."""
        mine, theirs = self._tensors(), other._tensors()
        width = max(self.milestones.shape[1], other.milestones.shape[1])
        for t in (mine, theirs):
            m = t["milestones"]
            t["milestones"] = torch.nn.functional.pad(m, (0, width - m.shape[1]), value=-1)
        self._set({k: torch.cat([v, theirs[k]]) for k, v in mine.items()})
