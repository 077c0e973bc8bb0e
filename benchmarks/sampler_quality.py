"""Search quality of the tuner's TPE populations against Optuna's TPE with constant liar.

Both samplers are asked in populations of 64 (all 64 asked, then all told, as the fused
engine drives them): Optuna's ``TPESampler`` refits its model for every ask (constant
liar, its default); the tuner's ``IncrementalTPESampler`` fits it once per population and
adds each member as a liar kernel. On three functions, the best value after 500 and
after 2000 trials, median (and range) over 5 seeds:

* ``rastrigin10``: the 10-d Rastrigin function on [-5.12, 5.12]^10 (minimum 0);
* ``mixed``: 4 continuous (one log-scaled), 2 integer and 2 categorical parameters
  (minimum 0): a shifted sphere plus integer and categorical penalties;
* ``population``: ``search_spaces/population.yaml`` through the space's own suggestions
  (conditional optimizer and schedule branches), valued by a made-up loss (minimum 0):
  each numeric parameter's squared distance from 30 % of its (log) range, each
  categorical's choice index, averaged.

    python benchmarks/sampler_quality.py            # --trials 2000 --seeds 5 --population 64

Prints a table and, with --json, the raw numbers. Figures in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from typing import Any

import optuna

from tuner.space import load_space
from tuner.space._tpe import IncrementalTPESampler
from tuner.space.sampling import one_population, seed_per_trial


def rastrigin10(trial: optuna.Trial) -> float:
    xs = [trial.suggest_float(f"x{i}", -5.12, 5.12) for i in range(10)]
    return 10 * len(xs) + sum(x * x - 10 * math.cos(2 * math.pi * x) for x in xs)


def mixed(trial: optuna.Trial) -> float:
    a = trial.suggest_float("a", -3, 3)
    b = trial.suggest_float("b", -3, 3)
    c = trial.suggest_float("c", 0, 1)
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    n = trial.suggest_int("n", 1, 32)
    m = trial.suggest_int("m", 2, 512, log=True)
    kind = trial.suggest_categorical("kind", ["a", "b", "c", "d"])
    flag = trial.suggest_categorical("flag", [True, False])
    return ((a - 1) ** 2 + (b + 0.5) ** 2 + (c - 0.3) ** 2 + (math.log10(lr) + 3) ** 2
            + abs(n - 20) / 10 + abs(math.log2(m) - 6) / 4
            + {"a": 1.0, "b": 0.0, "c": 0.5, "d": 2.0}[kind] + (0.0 if flag else 0.3))


def _population_objective() -> tuple[Any, str]:
    space = load_space("population")

    def value(trial: optuna.Trial) -> float:
        space.sample(trial)
        loss = 0.0
        for name, dist in trial.distributions.items():
            x = trial.params[name]
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                loss += 0.05 * dist.choices.index(x) / max(1, len(dist.choices) - 1)
                continue
            low, high, x = float(dist.low), float(dist.high), float(x)
            if dist.log:
                low, high, x = math.log(low), math.log(high), math.log(x)
            loss += ((x - low) / (high - low) - 0.3) ** 2 if high > low else 0.0
        return loss / max(1, len(trial.distributions))

    return value, "minimize"


def run(problem: str, incremental: bool, seed: int, trials: int, population: int,
        checkpoints: tuple[int, ...]) -> dict[int, float]:
    if problem == "population":
        objective, direction = _population_objective()
        options = dict(n_startup_trials=32, group=True)
    else:
        objective, direction = (rastrigin10 if problem == "rastrigin10" else mixed), "minimize"
        options = dict(n_startup_trials=10)
    cls = IncrementalTPESampler if incremental else optuna.samplers.TPESampler
    sampler = seed_per_trial(cls(seed=seed, **options), seed)
    study = optuna.create_study(sampler=sampler, direction=direction)
    best: dict[int, float] = {}
    done = 0
    while done < trials:
        with one_population(sampler):
            batch = [study.ask() for _ in range(min(population, trials - done))]
            values = [objective(t) for t in batch]
        for trial, value in zip(batch, values, strict=True):
            study.tell(trial, value)
        done += len(batch)
        for point in checkpoints:
            if done >= point and point not in best:
                best[point] = study.best_value
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--population", type=int, default=64)
    parser.add_argument("--problems", default="rastrigin10,mixed,population")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    checkpoints = tuple(sorted({min(500, args.trials), args.trials}))
    results: dict[str, Any] = {}
    for problem in args.problems.split(","):
        for label, incremental in (("tuner", True), ("optuna", False)):
            runs = []
            for seed in range(args.seeds):
                began = time.perf_counter()
                runs.append(run(problem, incremental, seed, args.trials, args.population,
                                checkpoints))
                print(f"{problem} {label} seed {seed}: {runs[-1]} "
                      f"({time.perf_counter() - began:.0f} s)", file=sys.stderr, flush=True)
            results[f"{problem}/{label}"] = runs
    print(f"{'problem':12} {'sampler':7} " + " ".join(
        f"{'best@' + str(p) + ' median [min, max]':>32}" for p in checkpoints))
    for key, runs in results.items():
        problem, label = key.split("/")
        cells = []
        for point in checkpoints:
            values = [r[point] for r in runs]
            cells.append(f"{statistics.median(values):10.4g} [{min(values):.4g}, "
                         f"{max(values):.4g}]".rjust(32))
        print(f"{problem:12} {label:7} " + " ".join(cells))
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
