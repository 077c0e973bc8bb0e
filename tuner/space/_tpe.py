"""Optuna's TPE with what it knows of the study kept between asks.

Optuna's ``TPESampler`` starts from the whole history at every ask: it reads the study's
trials from the storage once for the search space and twice per search-space group,
turns every trial's parameters into arrays, sorts every trial by its value, folds every
trial's distributions into the group decomposition again and fits both Parzen
estimators. A population asks K trials in a row, so all of that is done K times over a
history that has not changed.

:class:`IncrementalTPESampler` makes the same suggestions (same seed, same history: the
same draws, pinned to Optuna's ``TPESampler`` by ``tests/test_tpe.py``, for single asks
and for populations) from what it keeps:

* **The finished trials, each read once.** A COMPLETE or PRUNED trial never changes, so
  when one is first seen its value, its pruned score and its parameters (in the internal
  representation of each distribution asked for, one NumPy column per parameter) are
  appended to :class:`_Finished`; nothing of it is converted again.
* **The group decomposition, folded forward.** Only the trials finished since the last
  ask are folded in, in trial-number order, which is what Optuna's fold over all of them
  comes to (folding a trial in again changes nothing).
* **The split and the "below" estimator, once per set of finished trials.** The split
  into the best trials and the rest is a stable sort of those columns, made once per set
  of finished trials, and the estimator of the best trials is fitted once per set and
  group: the K asks of a population, which see the same finished trials, share them.
* **One read of the storage per sampling**, shared by every group of a trial.

What each ask still fits is the estimator of the other ("above") trials when some are
running: under constant liar (Optuna's default, kept) every running trial, the
population's earlier members included, is one more "above" observation, and that is
what keeps a population's members from piling onto one point. That refit is NumPy work
over the kept columns, not a pass over the trials.

Several objectives, constraints (a ``constraints_func`` or infeasible trials), a
replaced Parzen estimator class, a categorical value its distribution no longer holds:
Optuna's own code samples those.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from optuna.study import Study

_WITH_RUNNING = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
Space = dict[str, BaseDistribution]


class _Growing:
    """A 1-d NumPy array appended to in place (its capacity doubles when full)."""

    def __init__(self, dtype: Any, fill: Any = 0) -> None:
        self._data = np.full(64, fill, dtype=dtype)
        self._fill = fill
        self._size = 0

    def append(self, value: Any) -> None:
        if self._size == len(self._data):
            more = np.full(len(self._data), self._fill, dtype=self._data.dtype)
            self._data = np.concatenate([self._data, more])
        self._data[self._size] = value
        self._size += 1

    @property
    def array(self) -> np.ndarray:
        return self._data[:self._size]


class _Column:
    """One parameter of every finished trial, in one distribution's internal
    representation: ``values[i]`` where ``has[i]`` (the i-th trial took the parameter).
    ``broken``: a trial's value has no representation in the distribution (a choice
    it no longer holds), which Optuna's own code reports."""

    def __init__(self, name: str, distribution: BaseDistribution) -> None:
        self.name, self.distribution = name, distribution
        categorical = isinstance(distribution, CategoricalDistribution)
        # As Optuna's arrays hold them: choice indices are integers, the rest floats.
        self.values = _Growing(np.int64 if categorical else np.float64)
        self.has = _Growing(np.bool_, False)
        self.broken = False

    def append(self, params: dict[str, Any]) -> None:
        value = params.get(self.name, _MISSING)
        internal: Any = 0
        if value is not _MISSING:
            try:
                internal = self.distribution.to_internal_repr(value)
            except ValueError:
                self.broken = True
        self.values.append(internal)
        self.has.append(value is not _MISSING)


_MISSING = object()


class _Split:
    """The finished trials' indices (into :class:`_Finished`), split as Optuna splits
    them, each side in trial-number order."""

    def __init__(self, below: np.ndarray, above: np.ndarray) -> None:
        self.below, self.above = below, above


class _Finished:
    """The study's finished trials in the order first seen, as columns."""

    def __init__(self, study_id: int, maximize: bool) -> None:
        self.study_id, self.maximize = study_id, maximize
        self.seen: set[int] = set()
        self.numbers = _Growing(np.int64)
        self.complete = _Growing(np.bool_, False)
        self.values = _Growing(np.float64)
        # Optuna's score of a pruned trial: (-last step, its value signed to minimize).
        self.pruned_step = _Growing(np.float64)
        self.pruned_value = _Growing(np.float64)
        self.params: list[dict[str, Any]] = []
        self.distributions: list[dict[str, BaseDistribution]] = []
        self.columns: dict[tuple[str, BaseDistribution], _Column] = {}
        self.infeasible = False
        self.version = 0
        self._split: tuple[int, int, _Split] | None = None
        self.unfolded: list[int] = []  # not yet in the group decomposition

    def __len__(self) -> int:
        return len(self.params)

    def add_new(self, trials: Sequence[FrozenTrial], finished: int) -> None:
        """Append the trials of ``trials`` (the study's, in number order) that are
        finished and not seen before; ``finished`` is how many of them are finished."""
        if finished == len(self.params):
            return
        for trial in trials:
            if trial.state is TrialState.RUNNING or trial.number in self.seen:
                continue
            self._append(trial)
        self.version += 1

    def _append(self, trial: FrozenTrial) -> None:
        self.seen.add(trial.number)
        self.unfolded.append(len(self.params))
        self.numbers.append(trial.number)
        complete = trial.state is TrialState.COMPLETE
        self.complete.append(complete)
        self.values.append(trial.value if complete else 0.0)
        step, value = 1.0, 0.0
        if not complete and trial.intermediate_values:
            last, reported = max(trial.intermediate_values.items())
            step = -float(last)
            value = (np.inf if np.isnan(reported) else
                     -reported if self.maximize else reported)
        self.pruned_step.append(step)
        self.pruned_value.append(value)
        if any(v > 0 for v in trial.constraints.values()):
            self.infeasible = True
        self.params.append(trial.params)
        self.distributions.append(trial.distributions)
        for column in self.columns.values():
            column.append(trial.params)

    def column(self, name: str, distribution: BaseDistribution) -> _Column:
        key = (name, distribution)
        column = self.columns.get(key)
        if column is None:
            column = self.columns[key] = _Column(name, distribution)
            for params in self.params:
                column.append(params)
        return column

    def split(self, n_below: int) -> _Split:
        """Optuna's ``_split_trials`` over the finished trials (no infeasible ones): the
        ``n_below`` best complete trials, then the best pruned (latest step first, then
        value) while fewer than ``n_below``; ties in trial-number order."""
        if self._split is not None and self._split[:2] == (self.version, n_below):
            return self._split[2]
        numbers = self.numbers.array
        by_number = np.argsort(numbers, kind="stable")
        complete = by_number[self.complete.array[by_number]]
        values = self.values.array[complete]
        ranked = complete[np.argsort(-values if self.maximize else values, kind="stable")]
        taken = min(n_below, len(ranked))
        below, above = [ranked[:taken]], [ranked[taken:]]
        pruned = by_number[~self.complete.array[by_number]]
        ranked = pruned[np.lexsort((self.pruned_value.array[pruned],
                                    self.pruned_step.array[pruned]))]
        taken = min(max(0, n_below - taken), len(ranked))
        below.append(ranked[:taken])
        above.append(ranked[taken:])
        split = _Split(*(_by_number(np.concatenate(side), numbers)
                         for side in (below, above)))
        self._split = (self.version, n_below, split)
        return split


def _by_number(indices: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    return indices[np.argsort(numbers[indices], kind="stable")]


class IncrementalTPESampler(optuna.samplers.TPESampler):
    """Optuna's ``TPESampler`` (the same arguments, the same suggestions) keeping the
    study's finished trials, its group decomposition and its fitted "below" estimator
    between asks (see the module's description)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._finished: _Finished | None = None
        self._groups: Any = None  # Optuna's group decomposition, folded forward
        self._below_cache: dict[Any, Any] = {}
        self._lock = threading.RLock()
        self._local = threading.local()
        self._population: _Population | None = None

    # -- Optuna's hooks ------------------------------------------------------------------

    def infer_relative_search_space(self, study: Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if not (self._group and self._is_multivariate(study)):
            return super().infer_relative_search_space(study, trial)
        from tuner.storage.optuna_compat import SearchSpaceGroup

        with self._lock:
            finished = self._snapshot(study, trial)[0]
            if self._groups is None:
                self._groups = SearchSpaceGroup()
            unfolded = np.asarray(finished.unfolded, dtype=np.int64)
            for index in _by_number(unfolded, finished.numbers.array):
                self._groups.add_distributions(finished.distributions[index])
            finished.unfolded.clear()
            self._search_space_group = copy.deepcopy(self._groups)
        space: Space = {}
        for sub_space in self._search_space_group.search_spaces:
            # Sorted, as Optuna sorts them: string hashing differs between processes.
            for name, distribution in sorted(sub_space.items()):
                if not distribution.single():
                    space[name] = distribution
        return space

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        # One read of the study for all of this trial's groups.
        self._local.snapshot, self._local.active = None, True
        try:
            return super().sample_relative(study, trial, search_space)
        finally:
            self._local.snapshot, self._local.active = None, False

    def _sample_relative(self, study: Study, trial: FrozenTrial,
                         search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not self._fast(study):
            return super()._sample_relative(study, trial, search_space)
        if search_space == {}:
            return {}
        finished, _ = self._snapshot(study, trial)
        if len(finished) < self._n_startup_trials:
            return {}
        return self._sample(study, trial, search_space)

    def _sample(self, study: Study, trial: FrozenTrial,
                search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not self._fast(study):
            return super()._sample(study, trial, search_space)
        with self._lock:
            finished, running = self._snapshot(study, trial)
            if finished.infeasible or any(finished.column(name, dist).broken
                                          for name, dist in search_space.items()):
                return super()._sample(study, trial, search_space)
            population = self._population
            if population is not None and not any(d.single() for d in search_space.values()):
                return self._sample_member(study, population, search_space)
            below, above = self._fit(study, finished, running, search_space)
        samples = below.sample(self._rng.rng, self._n_ei_candidates)
        chosen = self._compare(samples, self._compute_acquisition_func(samples, below, above))
        return {name: dist.to_external_repr(chosen[name]) for name, dist in search_space.items()}

    def _fit(self, study: Study, finished: _Finished, running: list[FrozenTrial],
             search_space: Space) -> tuple[Any, Any]:
        """Optuna's two Parzen estimators for ``search_space``: of the best finished
        trials (kept while no trial finishes) and of the others with ``running``."""
        from tuner.storage.optuna_compat import ParzenEstimator, default_gamma

        if self._gamma is None:
            self._gamma = default_gamma
        split = finished.split(self._gamma(len(finished)))
        key = (finished.version, tuple(search_space.items()))
        below = self._below_cache.get(key)
        if below is None:
            if len(self._below_cache) > 16 or any(
                    k[0] != finished.version for k in self._below_cache):
                self._below_cache.clear()
            below = self._below_cache[key] = ParzenEstimator(
                self._observations(finished, split.below, [], search_space, study),
                search_space, self._parzen_estimator_parameters)
        above = ParzenEstimator(
            self._observations(finished, split.above, running, search_space, study),
            search_space, self._parzen_estimator_parameters)
        return below, above

    # -- populations ---------------------------------------------------------------------

    @contextmanager
    def population(self) -> Iterator[None]:
        """Sample the trials of the block as one population: the study is read once, at
        the first sampling, and each search space's two estimators are fitted once from
        that read; each member sampled is then one more "above" kernel for the members
        after it (constant liar, kept in this process: see :class:`_Member`)."""
        with self._lock:
            self._population = _Population()
        try:
            yield
        finally:
            with self._lock:
                self._population = None

    def _sample_member(self, study: Study, population: _Population,
                       search_space: Space) -> dict[str, Any]:
        key = tuple(search_space.items())
        model = population.models.get(key)
        if model is None:
            assert population.read is not None  # read by _snapshot, first thing
            finished, running = population.read
            below, above = self._fit(study, finished, running, search_space)
            model = population.models[key] = _Member(
                below, above, search_space, self._parzen_estimator_parameters)
        samples = model.below.sample(self._rng.rng, self._n_ei_candidates)
        acquisition = model.below.log_pdf(samples) - model.log_above(samples)
        chosen = self._compare(samples, acquisition)
        model.lie(chosen)
        return {name: dist.to_external_repr(chosen[name]) for name, dist in search_space.items()}

    # -- what is kept --------------------------------------------------------------------

    def _fast(self, study: Study) -> bool:
        from tuner.storage.optuna_compat import ParzenEstimator

        return (len(study.directions) == 1 and self._constraints_func is None
                and self._parzen_estimator_cls is ParzenEstimator)

    def _snapshot(self, study: Study,
                  trial: FrozenTrial) -> tuple[_Finished, list[FrozenTrial]]:
        """The finished trials and the other running ones (under constant liar), read once
        per :meth:`sample_relative` of ``trial``, or now."""
        population = self._population
        if population is not None:
            if population.read is None:
                with self._lock:
                    population.read = self._read(study, trial)
            return population.read
        active = getattr(self._local, "active", False)
        kept = self._local.snapshot if active else None
        if kept is not None and kept[0] == trial.number:
            return kept[1]
        with self._lock:
            read = self._read(study, trial)
        if active:
            self._local.snapshot = (trial.number, read)
        return read

    def _read(self, study: Study, trial: FrozenTrial) -> tuple[_Finished, list[FrozenTrial]]:
        """Read the study's trials once: add those newly finished to what is kept, and
        return it with the running trials but ``trial`` (none without constant liar)."""
        from tuner.storage.optuna_compat import storage_of, study_id_of

        study_id = study_id_of(study)
        trials = storage_of(study).get_all_trials(study_id, deepcopy=False,
                                                  states=_WITH_RUNNING)
        running = [t for t in trials if t.state is TrialState.RUNNING]
        finished = self._finished
        if finished is None or finished.study_id != study_id or (
                len(trials) - len(running) < len(finished)):
            finished = self._finished = _Finished(
                study_id, study.direction == optuna.study.StudyDirection.MAXIMIZE)
            self._groups = None
            self._below_cache.clear()
        finished.add_new(trials, len(trials) - len(running))
        if not self._constant_liar:
            return finished, []
        return finished, [t for t in running if t.number != trial.number]

    def _observations(self, finished: _Finished, indices: np.ndarray,
                      running: list[FrozenTrial], search_space: Space,
                      study: Study) -> dict[str, np.ndarray]:
        """What Optuna's ``_get_internal_repr`` makes of the finished trials at
        ``indices`` and the ``running`` ones: each trial that took every parameter of
        ``search_space``, in trial-number order."""
        columns = [finished.column(name, dist) for name, dist in search_space.items()]
        taken = indices[np.all([c.has.array[indices] for c in columns], axis=0)]
        numbers = finished.numbers.array[taken]
        values = [c.values.array[taken] for c in columns]
        extra: list[list[Any]] = [[] for _ in columns]
        extra_numbers = []
        for trial in running:
            params = self._get_params(trial, study)
            if search_space.keys() <= params.keys():
                extra_numbers.append(trial.number)
                for out, (name, dist) in zip(extra, search_space.items(), strict=True):
                    out.append(dist.to_internal_repr(params[name]))
        if len(numbers) + len(extra_numbers) == 0:
            return {name: np.asarray([]) for name in search_space}
        if extra_numbers:
            order = np.argsort(np.concatenate([numbers, extra_numbers]), kind="stable")
            values = [np.concatenate([v, np.asarray(e, dtype=v.dtype)])[order]
                      for v, e in zip(values, extra, strict=True)]
        return dict(zip(search_space, values, strict=True))


class _Population:
    """What one population's members share: the study as read at the first member's
    sampling, and per search space the model fitted from it."""

    def __init__(self) -> None:
        self.read: tuple[_Finished, list[FrozenTrial]] | None = None
        self.models: dict[Any, _Member] = {}


class _Member:
    """One search space's estimators for a population, and its members as liars.

    Optuna's constant liar makes every running trial one more observation of the
    "above" estimator and fits it again for each ask. Here the "above" estimator is
    fitted once, at the population's first member, and each member sampled adds one
    kernel to it, as a refit would: weight 1 (that of the newest trials) and, per
    parameter, the bandwidth Optuna gives an observation there (the larger gap to its
    neighbours among the fitted observations, clipped as Optuna clips it) or the
    prior's smoothing of one choice. The fitted estimator's bandwidths and weights are
    not refitted for the members: the difference is that of a few more observations
    among many. The mixture is evaluated from arrays made once (:class:`_Mixture`), so
    a member costs a pass over the kernels, not a fit.
    """

    def __init__(self, below: Any, above: Any, search_space: Space,
                 parameters: Any) -> None:
        self.below = below
        self.above = _Mixture.of(above, list(search_space))
        n = self.above.size - 1  # the prior is the last kernel
        # The weights Optuna normalized the fitted kernels by, before normalizing.
        self.total = (float(np.sum(np.asarray(parameters.weights(n))[:n]))
                      + parameters.prior_weight) if n > 0 else 1.0
        self.prior_weight = parameters.prior_weight
        self.n = n
        self.liars: list[dict[str, float]] = []
        self._liar_mixture: _Mixture | None = None

    def log_above(self, samples: dict[str, np.ndarray]) -> np.ndarray:
        fitted = self.above.log_pdf(samples)
        if not self.liars:
            return fitted
        # The liars' mixture has equal weights: its density times their number is their sum.
        liars = self._liars().log_pdf(samples) + math.log(len(self.liars))
        return (np.logaddexp(fitted + math.log(self.total), liars)
                - math.log(self.total + len(self.liars)))

    def lie(self, chosen: dict[str, float]) -> None:
        self.liars.append(chosen)
        self._liar_mixture = None

    def _liars(self) -> _Mixture:
        if self._liar_mixture is None:
            self._liar_mixture = self.above.kernels_at(
                self.liars, n_kernels=self.n + 1 + len(self.liars),
                prior_weight=self.prior_weight)
        return self._liar_mixture


class _Dim:
    """One parameter of a mixture: a categorical's log weights per kernel, or a
    numerical parameter's kernels (truncated normal, on ``[low, high]`` in its
    transformed scale, of ``step`` > 0 when discrete)."""

    def __init__(self, name: str, *, log_weights: np.ndarray | None = None,
                 mu: np.ndarray | None = None, sigma: np.ndarray | None = None,
                 low: float = 0.0, high: float = 0.0, step: float = 0.0,
                 is_log: bool = False) -> None:
        self.name, self.numeric = name, mu is not None
        empty = np.empty(0)
        self.log_weights = log_weights if log_weights is not None else np.empty((0, 0))
        self.mu = mu if mu is not None else empty
        self.sigma = sigma if sigma is not None else empty
        self.low, self.high, self.step, self.is_log = low, high, step, is_log
        self.sorted_mu = np.sort(self.mu[:-1])  # the observations' (the prior's is last)
        self.pair_mu = self.pair_sigma = self.pair_of = empty
        if self.numeric and step:
            # A discrete parameter's kernels share few (mu, sigma) pairs: its mass per
            # pair and value, not per kernel and value.
            pairs, pair_of = np.unique(np.stack([self.mu, self.sigma]), axis=1,
                                       return_inverse=True)
            self.pair_mu, self.pair_sigma = pairs
            self.pair_of = np.ravel(pair_of)

    def transformed(self, values: np.ndarray) -> np.ndarray:
        return np.log(values) if self.is_log else values


class _Mixture:
    """A mixture of product kernels as arrays: ``log Σ_k w_k Π_d p_kd(x)`` for many ``x``
    at once. What does not depend on ``x`` (weights, bandwidths, the truncation's mass)
    is summed into one constant per kernel when the mixture is made, and the continuous
    parameters' squared distances come from two matrix products."""

    def __init__(self, dims: list[_Dim], log_weights: np.ndarray) -> None:
        from tuner.storage.optuna_compat import log_gauss_mass

        self.dims, self.size = dims, len(log_weights)
        constant = np.array(log_weights, dtype=np.float64)
        self._continuous = [d for d in dims if d.numeric and d.step == 0.0]
        for dim in dims:
            if not dim.numeric:
                continue
            constant -= log_gauss_mass((dim.low - dim.mu) / dim.sigma,
                                       (dim.high - dim.mu) / dim.sigma)
            if dim.step == 0.0:
                constant -= np.log(dim.sigma) + 0.5 * math.log(2 * math.pi)
        self._constant = constant
        if self._continuous:
            mu = np.stack([d.mu for d in self._continuous], axis=1)
            precision = 1.0 / np.stack([d.sigma for d in self._continuous], axis=1) ** 2
            self._precision, self._scaled_mu = precision, mu * precision
            self._mu_term = np.sum(mu * mu * precision, axis=1)

    @classmethod
    def of(cls, estimator: Any, names: list[str]) -> _Mixture:
        """The mixture of a fitted Optuna Parzen estimator over parameters ``names``."""
        from tuner.storage.optuna_compat import mixture_of

        weights, distributions = mixture_of(estimator)
        dims = []
        for name, dist in zip(names, distributions, strict=True):
            if not hasattr(dist, "mu"):
                dims.append(_Dim(name, log_weights=np.log(dist.weights)))
            else:
                dims.append(_Dim(name, mu=np.asarray(dist.mu, dtype=np.float64),
                                 sigma=np.asarray(dist.sigma, dtype=np.float64),
                                 low=dist.adapted_low, high=dist.adapted_high,
                                 step=float(dist.step), is_log=dist.is_log))
        return cls(dims, np.log(weights))

    def kernels_at(self, points: list[dict[str, float]], n_kernels: int,
                   prior_weight: float) -> _Mixture:
        """Equal-weight kernels at ``points`` (internal values), each with the bandwidth
        Optuna gives an observation there among this mixture's observations."""
        dims = []
        for dim in self.dims:
            values = np.asarray([p[dim.name] for p in points], dtype=np.float64)
            if not dim.numeric:
                choices = dim.log_weights.shape[1]
                # A row per point, and the prior's (weightless here) to close the arrays.
                weights = np.full((len(points) + 1, choices), prior_weight / n_kernels)
                weights[np.arange(len(points)), values.astype(np.int64)] += 1.0
                weights /= weights.sum(axis=1, keepdims=True)
                dims.append(_Dim(dim.name, log_weights=np.log(weights)))
                continue
            x = dim.transformed(values)
            grid = np.concatenate([[dim.low], dim.sorted_mu, [dim.high]])
            at = np.clip(np.searchsorted(grid, x), 1, len(grid) - 1)
            # The larger gap to its neighbours; none between equal observations (a
            # discrete parameter's, mostly), which Optuna sorts next to each other.
            gap = np.where(grid[at] == x, 0.0,
                           np.maximum(x - grid[at - 1], grid[at] - x))
            span = dim.high - dim.low
            sigma = np.clip(gap, span / min(100.0, 1.0 + n_kernels), span)
            # The prior's kernel closes each dimension's arrays, as in a fitted mixture.
            dims.append(_Dim(dim.name, mu=np.append(x, 0.5 * (dim.low + dim.high)),
                             sigma=np.append(sigma, span), low=dim.low, high=dim.high,
                             step=dim.step, is_log=dim.is_log))
        log_weights = np.full(len(points) + 1, -np.inf)
        log_weights[:-1] = -math.log(len(points))
        return _Mixture(dims, log_weights)

    def log_pdf(self, samples: dict[str, np.ndarray]) -> np.ndarray:
        """``log Σ_k w_k Π_d p_kd(x)`` for each ``x`` of ``samples`` (internal values by
        parameter, as a Parzen estimator samples them)."""
        m = len(next(iter(samples.values())))
        total = np.broadcast_to(self._constant, (m, self.size)).copy()
        if self._continuous:
            x = np.stack([d.transformed(np.asarray(samples[d.name], dtype=np.float64))
                          for d in self._continuous], axis=1)
            total -= 0.5 * ((x * x) @ self._precision.T - 2.0 * (x @ self._scaled_mu.T)
                            + self._mu_term)
        for dim in self.dims:
            if not dim.numeric:
                index = np.asarray(samples[dim.name]).astype(np.int64)
                total += dim.log_weights[:, index].T
            elif dim.step != 0.0:
                values, value_of = np.unique(np.asarray(samples[dim.name], dtype=np.float64),
                                             return_inverse=True)
                left = dim.transformed(values - dim.step / 2)[:, None]
                right = dim.transformed(values + dim.step / 2)[:, None]
                mass = _log_mass((left - dim.pair_mu) / dim.pair_sigma,
                                 (right - dim.pair_mu) / dim.pair_sigma)
                total += mass[np.ix_(value_of.ravel(), dim.pair_of)]
        peak = total.max(axis=1)
        peak[np.isneginf(peak)] = 0.0
        with np.errstate(divide="ignore"):
            return np.log(np.exp(total - peak[:, None]).sum(axis=1)) + peak


def _log_mass(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``log(Φ(b) - Φ(a))`` elementwise, ``a < b``, computed in whichever tail keeps it
    accurate (as Optuna's ``_log_gauss_mass``, with SciPy's vectorized ``log_ndtr``)."""
    from scipy.special import log_ndtr, ndtr

    a, b = np.broadcast_arrays(a, b)
    out = np.empty(a.shape)
    left, right = b <= 0, a > 0
    central = ~(left | right)

    def log_diff(x: np.ndarray, y: np.ndarray) -> np.ndarray:  # log(e^x - e^y), x > y
        with np.errstate(divide="ignore"):
            return x + np.log1p(-np.exp(y - x))

    out[left] = log_diff(log_ndtr(b[left]), log_ndtr(a[left]))
    out[right] = log_diff(log_ndtr(-a[right]), log_ndtr(-b[right]))
    out[central] = np.log1p(-ndtr(a[central]) - ndtr(-b[central]))
    return out
