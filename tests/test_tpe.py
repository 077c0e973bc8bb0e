"""The tuner's TPE (tuner/space/_tpe.py) against Optuna's own TPESampler.

Single asks: the same suggestions as Optuna's for the same seed and history, trial for
trial, whatever the history holds (pruned trials, running ones under constant liar,
conditional parameters, either direction, groups or not, on Optuna's in-memory storage
and the tuner's database). An Optuna upgrade that changes TPE fails here.

Populations: fitted once, and still diverse: each member is a liar for those after it.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from tuner.space import load_space
from tuner.space._tpe import IncrementalTPESampler, _Member, _Mixture
from tuner.space.sampling import build_sampler, one_population, seed_per_trial
from tuner.storage import TunerStorage
from tuner.storage import optuna_compat as compat

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5, 5)
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    n = trial.suggest_int("n", 1, 8)
    k = trial.suggest_int("k", 2, 256, log=True)
    step = trial.suggest_float("step", 0.0, 1.0, step=0.1)
    opt = trial.suggest_categorical("opt", ["adam", "sgd", "rms"])
    extra = trial.suggest_float("mom", 0.5, 0.99) if opt == "sgd" else 0.0
    return ((x - 1) ** 2 + math.log10(lr) ** 2 + 0.1 * n + 0.01 * math.log2(k) + step
            + (opt == "adam") + extra)


def _suggestions(sampler: optuna.samplers.BaseSampler, *, trials: int, population: int,
                 direction: str = "minimize", prune: bool = False,
                 storage: Any = None) -> list[tuple[Any, ...]]:
    """The params of each trial of a study driven in populations (``population`` asked,
    sampled one after another, then told), some pruned after a report."""
    study = optuna.create_study(sampler=sampler, direction=direction, storage=storage)
    out: list[tuple[Any, ...]] = []
    while len(out) < trials:
        batch = [study.ask() for _ in range(population)]
        values = [_objective(t) for t in batch]
        for i, (trial, value) in enumerate(zip(batch, values, strict=True)):
            out.append(tuple(sorted(trial.params.items())))
            if prune and i % 3 == 0:
                trial.report(value, 1 + i % 4)
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, value)
    return out


CASES = list(itertools.product((1, 5), (False, True), ("minimize", "maximize"),
                               (False, True)))


@pytest.mark.parametrize(("population", "group", "direction", "prune"), CASES)
def test_suggestions_are_optunas_for_the_same_seed_and_history(
        population: int, group: bool, direction: str, prune: bool) -> None:
    """Asked one at a time as Optuna asks (each trial sampled on its own, others RUNNING
    around it when ``population`` > 1), every suggestion equals Optuna's TPESampler's."""
    def sampler(cls: type) -> optuna.samplers.BaseSampler:
        return cls(seed=3, group=group, n_startup_trials=5)

    theirs = _suggestions(sampler(optuna.samplers.TPESampler), trials=50,
                          population=population, direction=direction, prune=prune)
    ours = _suggestions(sampler(IncrementalTPESampler), trials=50, population=population,
                        direction=direction, prune=prune)
    assert ours == theirs


def test_suggestions_are_optunas_on_the_tuners_database_with_per_trial_seeds(
        tmp_path: Path) -> None:
    """The sampler as the tuner builds it (per-trial seeding), on the tuner's cached
    storage, against Optuna's TPESampler under the same seeding on Optuna's storage."""
    space = load_space("quick")
    storage = TunerStorage(f"sqlite:///{tmp_path / 'tpe.db'}", heartbeat=False).open()
    ours = build_sampler(space)
    assert isinstance(ours, IncrementalTPESampler)
    theirs = build_sampler(space, incremental=False)
    assert type(theirs) is optuna.samplers.TPESampler

    def drive(sampler: optuna.samplers.BaseSampler, on: Any) -> list[Any]:
        study = optuna.create_study(sampler=sampler, storage=on, direction="maximize")
        seen = []
        for _ in range(40):
            trial = study.ask()
            space.sample(trial)
            seen.append(dict(trial.params))
            study.tell(trial, -sum(v for v in trial.params.values()
                                   if isinstance(v, float)))
        return seen

    assert drive(ours, storage.studies) == drive(theirs, None)


def test_the_fast_path_is_what_runs() -> None:
    """Optuna's own sampling is not what made the suggestions above equal: the tuner's
    sampler never falls back to it on a plain single-objective study."""
    calls = []
    original = optuna.samplers.TPESampler._sample

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(type(self))
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(optuna.samplers.TPESampler, "_sample", counted)
        _suggestions(IncrementalTPESampler(seed=0, group=True, n_startup_trials=5),
                     trials=30, population=3, prune=True)
    assert calls == []


def test_what_it_does_not_keep_is_sampled_by_optuna() -> None:
    """Several objectives and constraints: Optuna's own code, the same suggestions."""
    def two(trial: optuna.Trial) -> tuple[float, float]:
        x, y = trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)
        return x + y, (1 - x) * y

    def constrained(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -2, 2)
        trial.set_constraint("positive", -x)  # feasible when x >= 0
        return x * x

    runs = []
    for cls in (optuna.samplers.TPESampler, IncrementalTPESampler):
        multi = optuna.create_study(sampler=cls(seed=1, n_startup_trials=4),
                                    directions=["minimize", "minimize"])
        multi.optimize(two, n_trials=15)
        single = optuna.create_study(sampler=cls(seed=1, n_startup_trials=4))
        single.optimize(constrained, n_trials=15)
        runs.append(([t.params for t in multi.trials], [t.params for t in single.trials]))
    assert runs[0] == runs[1]


def test_the_private_tpe_members_it_relies_on_are_there() -> None:
    """What the subclass overrides keeps its signature; what it reads is still kept."""
    import inspect

    for name in compat.TPE_OVERRIDDEN:
        original = vars(optuna.samplers.TPESampler).get(name)
        assert inspect.isfunction(original), f"TPESampler.{name} is gone"
        assert (list(inspect.signature(original).parameters)
                == list(inspect.signature(getattr(IncrementalTPESampler, name)).parameters))
    sampler = optuna.samplers.TPESampler(group=True)
    missing = [n for n in compat.TPE_INHERITED if not hasattr(sampler, n)]
    assert missing == []


# -- the mixture the population path evaluates ----------------------------------------------

SPACE = {"a": FloatDistribution(-3, 5), "lr": FloatDistribution(1e-5, 1, log=True),
         "n": IntDistribution(1, 16), "k": IntDistribution(2, 512, log=True),
         "c": CategoricalDistribution(["x", "y", "z"]),
         "s": FloatDistribution(0, 1, step=0.1)}


def _observations(rng: np.random.RandomState, n: int) -> dict[str, np.ndarray]:
    return {"a": rng.uniform(-3, 5, n), "lr": np.exp(rng.uniform(math.log(1e-5), 0, n)),
            "n": rng.randint(1, 17, n).astype(float),
            "k": np.round(np.exp(rng.uniform(math.log(2), math.log(512), n))),
            "c": rng.randint(0, 3, n), "s": np.round(rng.uniform(0, 1, n) * 10) / 10}


@pytest.mark.parametrize("n", [0, 1, 30, 400])
def test_the_mixture_is_optunas_parzen_estimator(n: int) -> None:
    """Every kind of parameter (continuous, log, integer, log integer, stepped,
    categorical): the same log density as Optuna's estimator, to rounding."""
    rng = np.random.RandomState(n)
    parameters = optuna.samplers.TPESampler()._parzen_estimator_parameters
    estimator = compat.ParzenEstimator(_observations(rng, n) if n else
                                       {k: np.asarray([]) for k in SPACE}, SPACE, parameters)
    samples = estimator.sample(rng, 64)
    np.testing.assert_allclose(_Mixture.of(estimator, list(SPACE)).log_pdf(samples),
                               estimator.log_pdf(samples), rtol=1e-9, atol=1e-9)


def test_a_liar_is_close_to_optunas_refit_with_it() -> None:
    """A member added as a liar kernel changes the "above" density as refitting Optuna's
    estimator with one more observation does, on continuous and categorical parameters
    (integers' bandwidths in Optuna's fit depend on how its sort orders ties), but for
    the few points near the liar's neighbours, whose bandwidths a refit narrows."""
    rng = np.random.RandomState(0)
    space = {k: SPACE[k] for k in ("a", "lr", "c")}
    parameters = optuna.samplers.TPESampler()._parzen_estimator_parameters
    observations = {k: v for k, v in _observations(rng, 300).items() if k in space}
    estimator = compat.ParzenEstimator(observations, space, parameters)
    liar = estimator.sample(rng, 1)
    samples = estimator.sample(rng, 200)
    samples = {k: np.concatenate([v, liar[k]]) for k, v in samples.items()}
    refit = compat.ParzenEstimator(
        {k: np.concatenate([observations[k], liar[k].astype(observations[k].dtype)])
         for k in space}, space, parameters)
    member = _Member(estimator, estimator, space, parameters)
    before = member.log_above(samples)
    member.lie({k: float(v[0]) for k, v in liar.items()})
    after = member.log_above(samples)
    # Away from the liar's neighbours (whose bandwidths a refit narrows), the same.
    assert np.quantile(np.abs(after - refit.log_pdf(samples)), 0.9) < 0.01
    assert after[-1] > before[-1] + 0.5  # at the liar itself, the density rose


# -- populations --------------------------------------------------------------------------

def _population(sampler: optuna.samplers.BaseSampler, history: int = 200,
                size: int = 32) -> tuple[optuna.Study, list[dict[str, Any]]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("x", -5, 5) - 1) ** 2
                   + (t.suggest_float("y", -5, 5) + 2) ** 2, n_trials=history)
    study.sampler = sampler
    with one_population(sampler):
        members = [study.ask() for _ in range(size)]
        for trial in members:
            trial.suggest_float("x", -5, 5)
            trial.suggest_float("y", -5, 5)
    return study, [m.params for m in members]


def _spread(points: list[dict[str, Any]]) -> float:
    xy = np.asarray([[p["x"], p["y"]] for p in points])
    distances = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    return float(np.median(np.sort(distances, axis=1)[:, 1]))  # to the nearest other


def test_a_population_reads_the_study_once_and_fits_once() -> None:
    sampler = IncrementalTPESampler(seed=0, n_startup_trials=5)
    fits = []
    original = compat.ParzenEstimator.__init__

    def counted(self: Any, *args: Any, **kwargs: Any) -> None:
        fits.append(1)
        original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compat.ParzenEstimator, "__init__", counted)
        _, members = _population(sampler)
    assert len(fits) == 2  # one "below" and one "above" for the whole population
    assert len({(m["x"], m["y"]) for m in members}) == len(members)


def test_a_populations_members_stay_apart_as_optunas_constant_liar_keeps_them() -> None:
    """Without liars every member of a population would see the same model; with
    them, members spread as Optuna's constant liar spreads them (the same order of
    nearest-neighbour distance), and all near the optimum's region."""
    ours = _spread(_population(IncrementalTPESampler(seed=0, n_startup_trials=5))[1])
    theirs = _spread(_population(optuna.samplers.TPESampler(seed=0, n_startup_trials=5))[1])
    liars_off = _spread(_population(optuna.samplers.TPESampler(
        seed=0, n_startup_trials=5, constant_liar=False))[1])
    assert ours > 0.5 * theirs
    assert ours > 1.5 * liars_off


def test_a_populations_suggestions_are_seeded() -> None:
    first = _population(seed_per_trial(IncrementalTPESampler(seed=4, n_startup_trials=5), 4))
    again = _population(seed_per_trial(IncrementalTPESampler(seed=4, n_startup_trials=5), 4))
    other = _population(seed_per_trial(IncrementalTPESampler(seed=5, n_startup_trials=5), 5))
    assert first[1] == again[1]
    assert first[1] != other[1]


def test_after_a_population_single_asks_are_optunas_again() -> None:
    """The population's state ends with its block: on the study it left, the next single
    ask is what Optuna's TPESampler asks of a copy of that study."""
    ours = seed_per_trial(IncrementalTPESampler(seed=2, n_startup_trials=5), 2)
    study, _ = _population(ours)
    for trial in study.get_trials(states=[TrialState.RUNNING]):
        study.tell(trial.number, (trial.params["x"] - 1) ** 2)
    copy = optuna.create_study(sampler=seed_per_trial(
        optuna.samplers.TPESampler(seed=2, n_startup_trials=5), 2))
    copy.add_trials(study.trials)
    asked = []
    for each in (study, copy):
        trial = each.ask()
        asked.append((trial.suggest_float("x", -5, 5), trial.suggest_float("y", -5, 5)))
    assert asked[0] == asked[1]
