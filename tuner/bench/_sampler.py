"""``tuner bench sampler``: how fast the space's sampler suggests as the study grows.

For each study size and population size, a study is prefilled in the tuner's storage
with ``size`` finished trials (drawn from the space by a seeded random sampler in memory,
with a made-up objective, then bulk-inserted into Optuna's tables, see
:func:`tuner.storage.insert_trials`), loaded as a tuner worker loads it (the sampler of
:func:`tuner.space.sampling.build_sampler`, on :attr:`TunerStorage.studies`), and then
timed as the fused engine drives it: ``population`` asks in a row, each a ``study.ask()``
and the space's suggestions (``Space.sample``), all asked before any is told, so the
sampler sees them RUNNING, then ``population`` tells; until ``asks`` trials are told.
A population's asks are sampled as one (:func:`tuner.space.sampling.one_population`), as
the fused engine samples them.

A row gives the median time of an ask (and of its two parts: creating the trial, and the
suggestions; Optuna computes a trial's relative sampling, TPE's multivariate or group
model, lazily at its first suggestion, so that falls in the suggestions too), the median
tell, and the trials per second of the asks and tells together.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.trial import FrozenTrial, TrialState

from tuner.bench._startup import versions
from tuner.space import SamplerSpec, Space, load_space
from tuner.space.sampling import SAMPLERS, build_sampler, one_population
from tuner.storage import TunerStorage, insert_trials, next_trial_id
from tuner.storage.optuna_compat import study_id_of

COLUMNS = ("sampler", "size", "population", "asks", "ask_ms", "create_ms", "suggest_ms",
           "ask_p90_ms", "tell_ms", "trials_per_s")
DEFAULT_SIZES = (100, 1000, 3000, 10_000)
DEFAULT_POPULATIONS = (1, 64)
# The samplers --sampler may name; a grid needs a finite grid for every parameter.
SAMPLER_NAMES = tuple(name for name in SAMPLERS if name != "grid")
_CHUNK = 2000  # trials per bulk insert


@dataclass(frozen=True)
class SamplerRow:
    """One (study size, population) point: medians in milliseconds, throughput per second."""

    sampler: str
    size: int
    population: int
    asks: int
    ask_ms: float
    create_ms: float
    suggest_ms: float
    ask_p90_ms: float
    tell_ms: float
    trials_per_s: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def bench_space(space: str, sampler: str | None = None) -> Space:
    """The space ``space`` (a built-in name or a YAML file), with sampler ``sampler`` (its
    default options, the space's seed) instead of its own when one is named."""
    loaded = load_space(space)
    if sampler is None or sampler == loaded.sampler.name:
        return loaded
    return dataclasses.replace(loaded, sampler=SamplerSpec(name=sampler))


def _objective(params: dict[str, Any], distributions: dict[str, BaseDistribution],
               rng: random.Random) -> float:
    """A made-up value in [0, 1] that depends on every parameter, with a little noise: each
    numeric parameter is best at 30 % of its (log) range, each categorical at its first
    choice."""
    loss = 0.0
    for name, dist in distributions.items():
        value = params[name]
        if isinstance(dist, CategoricalDistribution):
            loss += 0.05 * dist.choices.index(value) / max(1, len(dist.choices) - 1)
            continue
        assert isinstance(dist, FloatDistribution | IntDistribution)
        low, high, x = float(dist.low), float(dist.high), float(value)
        if dist.log:
            low, high, x = math.log(low), math.log(high), math.log(x)
        u = (x - low) / (high - low) if high > low else 0.0
        loss += (u - 0.3) ** 2
    return min(1.0, max(0.0, 1.0 - loss / max(1, len(distributions)) +
                        rng.gauss(0.0, 0.01)))


def draw_trials(space: Space, n: int, seed: int = 0) -> list[FrozenTrial]:
    """``n`` finished trials of ``space``: drawn by a seeded random sampler through the
    space's own suggestions (conditional branches included), valued by a made-up
    objective, in memory."""
    rng = random.Random(seed)
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(),
                                sampler=optuna.samplers.RandomSampler(seed=seed),
                                direction=_direction(space))
    for _ in range(n):
        trial = study.ask()
        space.sample(trial)
        study.tell(trial, _objective(trial.params, trial.distributions, rng))
    return study.get_trials(deepcopy=False)


def _direction(space: Space) -> Literal["minimize", "maximize"]:
    return "maximize" if space.task.direction == "maximize" else "minimize"


def _rows(study_id: int, first_id: int,
          drawn: Sequence[FrozenTrial]) -> Iterator[dict[str, list[dict[str, Any]]]]:
    start = datetime(2026, 1, 1)
    json_of: dict[BaseDistribution, str] = {}
    for begin in range(0, len(drawn), _CHUNK):
        rows: dict[str, list[dict[str, Any]]] = {"trials": [], "params": [], "values": []}
        for number in range(begin, min(begin + _CHUNK, len(drawn))):
            trial, trial_id = drawn[number], first_id + number
            began = start + timedelta(seconds=10 * number)
            rows["trials"].append(dict(trial_id=trial_id, number=number, study_id=study_id,
                                       state=TrialState.COMPLETE.name, datetime_start=began,
                                       datetime_complete=began + timedelta(seconds=9)))
            for name, dist in trial.distributions.items():
                if dist not in json_of:
                    json_of[dist] = distribution_to_json(dist)
                rows["params"].append(dict(trial_id=trial_id, param_name=name,
                                           param_value=dist.to_internal_repr(trial.params[name]),
                                           distribution_json=json_of[dist]))
            assert trial.value is not None
            rows["values"].append(dict(trial_id=trial_id, objective=0, value=trial.value,
                                       value_type="FINITE"))
        yield rows


def prefill(storage: TunerStorage, space: Space, name: str,
            drawn: Sequence[FrozenTrial]) -> None:
    """Create study ``name`` with Optuna and bulk-insert the ``drawn`` trials into it, as
    COMPLETE trials numbered from 0."""
    study = optuna.create_study(study_name=name, storage=storage.optuna,
                                direction=_direction(space))
    first = next_trial_id(storage)
    for rows in _rows(study_id_of(study), first, drawn):
        insert_trials(storage, trial_rows=rows["trials"], params=rows["params"],
                      values=rows["values"], steps=[], tuner_rows=[])


def time_point(study: optuna.Study, space: Space, population: int, asks: int,
               seed: int = 0) -> SamplerRow:
    """Time ``asks`` trials on ``study``, ``population`` asked before any is told."""
    rng = random.Random(seed)
    create: list[float] = []
    suggest: list[float] = []
    tell: list[float] = []
    done = 0
    while done < asks:
        batch = []
        # A population is sampled as the fused engine samples it: as one.
        with one_population(study.sampler) if population > 1 else nullcontext():
            for _ in range(min(population, asks - done)):
                began = time.perf_counter()
                trial = study.ask()
                asked = time.perf_counter()
                space.sample(trial)
                create.append(asked - began)
                suggest.append(time.perf_counter() - asked)
                batch.append(trial)
        for trial in batch:
            value = rng.random()
            began = time.perf_counter()
            study.tell(trial, value)
            tell.append(time.perf_counter() - began)
        done += len(batch)
    whole = [c + s for c, s in zip(create, suggest, strict=True)]
    total = sum(whole) + sum(tell)
    ms = 1000.0
    return SamplerRow(
        sampler="", size=0, population=population, asks=asks,
        ask_ms=_digits(statistics.median(whole) * ms),
        create_ms=_digits(statistics.median(create) * ms),
        suggest_ms=_digits(statistics.median(suggest) * ms),
        ask_p90_ms=_digits(_quantile(whole, 0.9) * ms),
        tell_ms=_digits(statistics.median(tell) * ms),
        trials_per_s=_digits(asks / total if total > 0 else math.inf))


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def _digits(value: float) -> float:
    return float(f"{value:.4g}")


def run_sampler_bench(url: str, space: Space, sizes: Sequence[int] = DEFAULT_SIZES,
                      populations: Sequence[int] = DEFAULT_POPULATIONS, asks: int = 64,
                      say: Callable[[str], None] = print,
                      on_study: Callable[[TunerStorage, str, int], None] | None = None,
                      against_optuna: bool = False) -> list[SamplerRow]:
    """A row per (size, population), each on a study of its own in the database at
    ``url``; ``on_study(storage, name, moment)`` is called with each study's name before
    it is timed (``moment`` 0) and after (1), for checks. With ``against_optuna`` and a
    TPE space, each point is timed twice in a row on two equal studies: the tuner's TPE
    (``tpe``), then Optuna's own ``TPESampler`` with the same options and seeding
    (``optuna-tpe``)."""
    say(versions())
    storage = TunerStorage(url, heartbeat=False).open()
    began = time.perf_counter()
    drawn = draw_trials(space, max(sizes), seed=space.seed)
    most = max((len(t.params) for t in drawn), default=0)
    say(f"drew {len(drawn):,} trials of {space.name} (up to {most} parameters each) in "
        f"{time.perf_counter() - began:.1f} s; sampler {space.sampler.name} "
        f"{dict(space.sampler.options)}")
    variants = [(space.sampler.name, True)]
    if against_optuna and space.sampler.name == "tpe":
        variants.append(("optuna-tpe", False))
    rows = []
    for size in sizes:
        for population in populations:
            for label, incremental in variants:
                name = f"bench-sampler-{size}-{population}-{uuid.uuid4().hex[:6]}"
                began = time.perf_counter()
                prefill(storage, space, name, drawn[:size])
                # Loaded as a worker loads it: the space's sampler, on the cached storage;
                # the first read of the trials (a worker's first ask pays it once) is
                # left out.
                study = optuna.load_study(study_name=name, storage=storage.studies,
                                          sampler=build_sampler(space, incremental))
                study.get_trials(deepcopy=False)
                if on_study is not None:
                    on_study(storage, name, 0)
                filled = time.perf_counter() - began
                row = dataclasses.replace(time_point(study, space, population, asks,
                                                     seed=space.seed),
                                          sampler=label, size=size)
                if on_study is not None:
                    on_study(storage, name, 1)
                say(f"{label}, size {size:,}, population {population}: prefilled in "
                    f"{filled:.1f} s; ask {row.ask_ms:g} ms (median), "
                    f"{row.trials_per_s:g} trials/s")
                rows.append(row)
    return rows
