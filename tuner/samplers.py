"""Optuna samplers and pruners by name, built from the space's specs.

Nothing here samples or prunes by itself: Optuna does; this maps the YAML names to
Optuna's classes and fills in what the space implies (the seed, the grid, the
number of epochs as the pruners' maximum resource).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import optuna

from tuner.space._params import Fixed, grid_values

if TYPE_CHECKING:
    from tuner.space import PrunerSpec, Space

SAMPLERS: dict[str, Any] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "gp": optuna.samplers.GPSampler,
    "qmc": optuna.samplers.QMCSampler,
    "grid": optuna.samplers.GridSampler,
}

PRUNERS: dict[str, Any] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "patient": optuna.pruners.PatientPruner,
    "wilcoxon": optuna.pruners.WilcoxonPruner,
    "threshold": optuna.pruners.ThresholdPruner,
    "none": optuna.pruners.NopPruner,
}


class _BudgetedGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its ``study.stop()`` when the grid runs out.

    That call is only allowed inside ``Study.optimize``; the tuner's workers use
    ask-and-tell and cap the budget at the grid's size instead.
    """

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                    state: optuna.trial.TrialState, values: Sequence[float] | None) -> None:
        return None


def build_sampler(space: Space, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The space's sampler, seeded with the sampler's own seed or the space's, plus ``offset``."""
    spec = space.sampler
    kwargs = spec.kwargs
    kwargs["seed"] = kwargs.get("seed", space.seed) + offset
    if spec.name == "grid":
        grid = {p.name: grid_values(p) or [] for p in space.all_params()
                if not isinstance(p, Fixed)}
        return _BudgetedGridSampler(grid, seed=kwargs["seed"])
    if (spec.name == "tpe" and kwargs.get("multivariate") is not False
            and any(p.name in ("optimizer", "schedule") for p in space.params)):
        # Conditional branches: let multivariate TPE model each branch's group jointly.
        kwargs.setdefault("group", True)
    sampler: optuna.samplers.BaseSampler = SAMPLERS[spec.name](**kwargs)
    return sampler


def grid_size(space: Space) -> int:
    """How many points a grid search over ``space`` visits."""
    size = 1
    for param in space.all_params():
        values = None if isinstance(param, Fixed) else grid_values(param)
        size *= len(values) if values else 1
    return size


def build_pruner(spec: PrunerSpec, epochs: int) -> optuna.pruners.BasePruner:
    kwargs = spec.kwargs
    if spec.name in ("hyperband",):
        kwargs.setdefault("max_resource", epochs)
    if spec.name == "patient":
        inner = build_pruner(spec.wrapped, epochs) if spec.wrapped else None
        kwargs.setdefault("patience", 3)
        return optuna.pruners.PatientPruner(inner, **kwargs)
    pruner: optuna.pruners.BasePruner = PRUNERS[spec.name](**kwargs)
    return pruner
