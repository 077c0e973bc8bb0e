"""Queueing a trial with parameters of yours: a known-good configuration evaluated first.

Optuna's ``study.enqueue_trial`` adds a WAITING trial whose parameters are fixed, and a
worker claiming a trial takes a WAITING one before it samples a new one (``study.ask``),
whichever engine it runs. Optuna takes any value there and only warns, as the trial
runs, that a value is outside its distribution; :func:`check_params` refuses, before
anything is written, a name the study's space does not search, a value outside its range
or choices, and a conditional parameter whose parent is given another choice.

>>> from tuner.space import load_space
>>> check_params(load_space("quick"), {"lr": 0.01, "optimizer": "momentum", "momentum": 0.9})
{'lr': 0.01, 'optimizer': 'momentum', 'momentum': 0.9}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from tuner.catalogue import is_number
from tuner.errors import UsageError
from tuner.run.study import (
    SPACE_ATTR,
    count_states,
    finished,
    require_study,
    stored_budget,
    stored_space,
)
from tuner.space import Categorical, Fixed, FloatRange, IntRange, Param, Space, describe
from tuner.storage import TunerStorage
from tuner.storage.optuna_compat import distribution_contains

Condition = tuple[str, Any]  # (parent's name, the choice it must have)


@dataclass(frozen=True)
class Enqueued:
    """A trial :func:`enqueue` queued."""

    study: str
    number: int
    params: dict[str, Any]
    sampled: list[str]  # the searched parameters not given: the sampler draws them
    checked: bool  # False: the study has no stored space (not the tuner's), nothing checked
    finished: int
    budget: int | None


@dataclass(frozen=True)
class _Place:
    """Where a parameter is in the space: the choices of its parents it exists under."""

    param: Param
    conditions: tuple[Condition, ...]


def check_params(space: Space, params: Mapping[str, Any],
                 label: str = "--params") -> dict[str, Any]:
    """``params`` checked against ``space``, each value as the trial will record it (an
    integer for an int parameter, the choice itself for a categorical one).

    Raises :class:`~tuner.errors.UsageError` naming the parameter and its range.
    """
    if not params:
        raise UsageError(f"{label}: give at least one parameter, e.g. '{{\"lr\": 0.01}}'")
    places: dict[str, list[_Place]] = {}
    for place in _places(space.params + space.user_params):
        places.setdefault(place.param.name, []).append(place)
    searched = [name for name, where in places.items()
                if any(not isinstance(p.param, Fixed) for p in where)]
    checked = {}
    for name, value in params.items():
        if name not in places:
            raise UsageError(f"{label}: the study's space has no parameter {name!r}; it "
                             f"searches: {', '.join(searched) or 'nothing'}")
        param = _branch(name, places[name], params, label).param
        if isinstance(param, Fixed):
            raise UsageError(f"{label}: {name!r} is fixed at {param.value!r} in the study's "
                             f"space, not searched: leave it out")
        checked[name] = _value(param, value, label)
    return checked


def sampled_names(space: Space, params: Mapping[str, Any]) -> list[str]:
    """The searched parameters a trial with ``params`` will sample: those not given
    that exist under the choices given (a conditional one of a parent not given may be
    sampled too, if the sampler picks its choice)."""
    return [p.param.name for p in _places(space.params + space.user_params)
            if not isinstance(p.param, Fixed) and p.param.name not in params
            and all(parent in params and _same(params[parent], choice)
                    for parent, choice in p.conditions)]


def enqueue(storage: TunerStorage, study_name: str, params: Mapping[str, Any],
            label: str = "--params") -> Enqueued:
    """Queue a trial of ``study_name`` with ``params`` (checked against the study's
    stored space, when it has one), to be run before any sampled trial."""
    study_id = require_study(storage, study_name)
    known = SPACE_ATTR in storage.optuna.get_study_user_attrs(study_id)
    space = stored_space(storage, study_name) if known else None
    values = dict(params) if space is None else check_params(space, params, label)
    study = optuna.load_study(study_name=study_name, storage=storage.optuna)
    study.enqueue_trial(values)
    # Optuna does not say which trial it created: the newest waiting one with these
    # parameters (a retry queued meanwhile has its failed trial's).
    waiting = storage.optuna.get_all_trials(study_id, deepcopy=False,
                                            states=(TrialState.WAITING,))
    number = max(t.number for t in waiting if t.system_attrs.get("fixed_params") == values)
    return Enqueued(study_name, number, values,
                    [] if space is None else sampled_names(space, values), space is not None,
                    finished(count_states(storage, study)), stored_budget(storage, study_name))


def _places(params: Sequence[Param], conditions: tuple[Condition, ...] = ()) -> list[_Place]:
    """Every parameter, conditionals included, with the choices it exists under."""
    found = []
    for param in params:
        found.append(_Place(param, conditions))
        if isinstance(param, Categorical):
            for choice, sub in param.branches:
                found += _places(sub, (*conditions, (param.name, choice)))
    return found


def _branch(name: str, places: list[_Place], params: Mapping[str, Any], label: str) -> _Place:
    """The place of ``name`` that the choices in ``params`` select, or a UsageError
    saying which parent choice it needs."""
    unmet: list[Condition] = []
    for place in places:
        failed = [(parent, choice) for parent, choice in place.conditions
                  if parent not in params or not _same(params[parent], choice)]
        if not failed:
            return place
        unmet.append(failed[0])
    parent = unmet[0][0]
    choices = " or ".join(repr(c) for p, c in unmet if p == parent)
    if parent not in params:
        raise UsageError(f"{label}: {name!r} exists only when {parent} is {choices}: give "
                     f"{parent} too (e.g. \"{parent}\": {json.dumps(unmet[0][1])})")
    raise UsageError(f"{label}: {name!r} exists only when {parent} is {choices}, but {label} "
                 f"gives {parent} {params[parent]!r}")


def _value(param: Param, value: Any, label: str) -> Any:
    """``value`` as ``param``'s trial records it, or a UsageError naming the range."""
    rule, given = describe(param), json.dumps(value, default=repr)
    if isinstance(param, Categorical):
        for choice in param.choices:
            if _same(value, choice):
                return choice
        raise UsageError(f"{label}: {param.name!r} must be {rule}, but got {given}")
    distribution: BaseDistribution
    if isinstance(param, IntRange):
        whole = is_number(value) and float(value).is_integer()
        if not whole:
            raise UsageError(f"{label}: {param.name!r} must be an integer in {rule}, but got "
                             f"{given}")
        value = int(value)
        distribution = IntDistribution(param.low, param.high, log=param.log, step=param.step)
        rule += f" step {param.step}" if param.step != 1 else ""
    else:
        assert isinstance(param, FloatRange)
        if not is_number(value):
            raise UsageError(f"{label}: {param.name!r} must be a number in {rule}, but got "
                             f"{given}")
        value = float(value)
        distribution = FloatDistribution(param.low, param.high, log=param.log, step=param.step)
        rule += f" step {param.step:g}" if param.step is not None else ""
    # Optuna's own test of a value against a distribution (bounds, and the step's grid),
    # on a float: both distributions' internal representation.
    if not distribution_contains(distribution, float(value)):
        raise UsageError(f"{label}: {param.name!r} must be in {rule}, but got {given}")
    return value


def _same(value: Any, choice: Any) -> bool:
    """Equal as JSON values are: ``true`` is not ``1``, ``1`` is ``1.0``."""
    return bool(value == choice) and isinstance(value, bool) == isinstance(choice, bool)

