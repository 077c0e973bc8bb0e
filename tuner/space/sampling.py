"""Optuna samplers and pruners by name, built from the space's specs.

Nothing here samples or prunes by itself: Optuna does; this maps the YAML names to
Optuna's classes and fills in what the space implies (the seed, the grid, the
number of epochs as the pruners' maximum resource).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna

from tuner.space._params import Fixed, grid_values
from tuner.space._tpe import IncrementalTPESampler

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


def build_sampler(space: Space, incremental: bool = True) -> optuna.samplers.BaseSampler:
    """The space's sampler, seeded per trial from the sampler's own seed or the space's
    (see :func:`seed_per_trial`). TPE is :class:`IncrementalTPESampler` (Optuna's own
    ``TPESampler`` with ``incremental=False``, what benchmarks compare it with)."""
    spec = space.sampler
    kwargs = spec.kwargs
    kwargs["seed"] = kwargs.get("seed", space.seed)
    sampler: optuna.samplers.BaseSampler
    if spec.name == "grid":
        grid = {p.name: grid_values(p) or [] for p in space.all_params()
                if not isinstance(p, Fixed)}
        sampler = _BudgetedGridSampler(grid, seed=kwargs["seed"])
    else:
        if (spec.name == "tpe" and kwargs.get("multivariate") is not False
                and any(p.name in ("optimizer", "schedule") for p in space.params)):
            # Conditional branches: let multivariate TPE model each branch's group jointly.
            kwargs.setdefault("group", True)
        # TPE: Optuna's, keeping what it knows of the study between asks (tuner.space._tpe).
        fast = spec.name == "tpe" and incremental
        sampler = (IncrementalTPESampler if fast else SAMPLERS[spec.name])(**kwargs)
    return seed_per_trial(sampler, kwargs["seed"])


def seed_per_trial(sampler: optuna.samplers.BaseSampler,
                   seed: int) -> optuna.samplers.BaseSampler:
    """Reseed ``sampler``'s random states before each trial from ``(seed, trial number)``.

    A sampler seeded once draws the same sequence in every process, so workers that load
    a study at the same moment would suggest the same configurations, and a resumed study
    would replay its first random points. Trial numbers are unique within a study, so
    seeding each trial by its number gives every trial its own draws, whichever worker
    runs it, while one worker's study stays reproducible from its seed.

    What a trial samples jointly (right after its creation) is seeded by its number; each
    parameter sampled on its own (when the objective asks, maybe after other trials were
    created) by its number and the parameter's name, so no interleaving changes a draw.
    Optuna's samplers keep their generators as attributes (``_rng``, ``_cma_rng``, and
    those of the nested samplers they fall back on; found by
    :func:`tuner.storage.optuna_compat.random_states_of`): each is reseeded in place.
    """
    before_trial, sample_independent = sampler.before_trial, sampler.sample_independent

    def reseed(*key: int | str) -> None:
        # Imported at the first trial, not with this module: parsing a space (which builds
        # its sampler) needs no storage package, and so no SQLAlchemy.
        from tuner.storage.optuna_compat import random_states_of

        words = [seed % 2 ** 32, *(_word(k) for k in key)]
        for i, state in enumerate(random_states_of(sampler)):
            state.seed(int(np.random.SeedSequence([*words, i]).generate_state(1)[0]))

    def reseeded(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        reseed(trial.number)  # what the trial samples jointly, right after this
        before_trial(study, trial)

    def independent(study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str,
                    param_distribution: optuna.distributions.BaseDistribution) -> Any:
        # Sampled when the objective asks, maybe after other trials were created (a
        # fused population asks for all its members first): seeded by the parameter too.
        reseed(trial.number, param_name)
        return sample_independent(study, trial, param_name, param_distribution)

    sampler.before_trial = reseeded  # type: ignore[method-assign]
    sampler.sample_independent = independent  # type: ignore[method-assign]
    return sampler


def _word(key: int | str) -> int:
    """A 32-bit word of a seed from a trial number or a parameter's name."""
    if isinstance(key, int):
        return key % 2 ** 32
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")


@contextmanager
def one_population(sampler: optuna.samplers.BaseSampler) -> Iterator[None]:
    """The trials sampled in the block are one population, asked together: the space's
    TPE fits its model of the study once for them (see
    :meth:`tuner.space._tpe.IncrementalTPESampler.population`); any other sampler
    samples as ever."""
    if not isinstance(sampler, IncrementalTPESampler):
        yield
        return
    with sampler.population():
        yield


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
