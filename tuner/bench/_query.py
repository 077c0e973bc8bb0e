"""``tuner bench query``: the read-back commands against Optuna's own API, on a big study.

It builds a synthetic study (100,000 trials of 10 parameters and 20 intermediate values
by default) by bulk inserts into Optuna's tables, checks that Optuna reads it back, then
times each tuner query (in-process, as the CLI runs it, without the interpreter's
start-up) beside the Optuna path that answers the same question.
"""

from __future__ import annotations

import math
import random
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.trial import TrialState

from tuner.errors import TunerError
from tuner.storage import TunerStorage, insert_trials, next_trial_id
from tuner.storage.optuna_compat import study_id_of

# Ten parameters like the `regularization` space's: floats, ints and categoricals.
SPACE: dict[str, BaseDistribution] = {
    "l2": FloatDistribution(1e-6, 1e-2, log=True),
    "l1": FloatDistribution(1e-7, 1e-3, log=True),
    "dropout": FloatDistribution(0.0, 0.5),
    "input_noise": FloatDistribution(0.0, 0.3),
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "hidden": IntDistribution(16, 512, log=True),
    "layers": IntDistribution(1, 4),
    "optimizer": CategoricalDistribution(["sgd", "momentum", "adagrad", "rmsprop", "adam",
                                          "adamw"]),
    "schedule": CategoricalDistribution(["none", "step", "multistep", "exponential", "cosine",
                                         "plateau"]),
    "batchnorm": CategoricalDistribution([False, True]),
}
WHERE = "optimizer == 'adam' and dropout > 0.3"
_CHUNK = 2000  # trials per bulk insert


@dataclass(frozen=True)
class Timing:
    """One line of the result: a question, the tuner's answer time, Optuna's."""

    query: str
    tuner_s: float
    optuna_path: str
    optuna_s: float

    @property
    def speedup(self) -> float:
        return self.optuna_s / self.tuner_s if self.tuner_s > 0 else math.inf


def _sample(rng: random.Random, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return rng.choice(dist.choices)
    if isinstance(dist, IntDistribution):
        if dist.log:
            return round(math.exp(rng.uniform(math.log(dist.low), math.log(dist.high))))
        return rng.randint(dist.low, dist.high)
    assert isinstance(dist, FloatDistribution)
    if dist.log:
        return math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
    return rng.uniform(dist.low, dist.high)


def _accuracy(params: dict[str, Any], rng: random.Random) -> float:
    """A made-up validation accuracy that depends on the parameters, with noise."""
    score = 0.9 - 0.02 * abs(math.log10(params["lr"]) + 2.5) - 0.1 * params["dropout"] ** 2
    score += 0.02 * params["batchnorm"] + (0.01 if params["optimizer"] in ("adam", "adamw")
                                           else 0.0)
    return min(0.999, max(0.0, score + rng.gauss(0.0, 0.02)))


def _batches(study_id: int, first_id: int, n: int, steps: int,
             seed: int) -> Iterator[dict[str, list[dict[str, Any]]]]:
    rng = random.Random(seed)
    start = datetime(2025, 1, 1)
    dists = {name: (dist, distribution_to_json(dist)) for name, dist in SPACE.items()}
    rows: dict[str, list[dict[str, Any]]] = {"trials": [], "params": [], "values": [],
                                             "steps": [], "tuner": []}
    for number in range(n):
        trial_id = first_id + number
        params = {name: _sample(rng, dist) for name, (dist, _) in dists.items()}
        final = _accuracy(params, rng)
        r = rng.random()
        state = TrialState.COMPLETE if r < 0.8 else TrialState.PRUNED if r < 0.95 else (
            TrialState.FAIL)
        epochs = steps if state == TrialState.COMPLETE else rng.randint(1, steps)
        curve = [final * (1 - math.exp(-3 * (e + 1) / steps)) + rng.gauss(0, 0.005)
                 for e in range(epochs)]
        began = start + timedelta(seconds=10 * number)
        rows["trials"].append(dict(trial_id=trial_id, number=number, study_id=study_id,
                                   state=state.name, datetime_start=began,
                                   datetime_complete=began + timedelta(seconds=9)))
        rows["params"] += [dict(trial_id=trial_id, param_name=name,
                                param_value=dist.to_internal_repr(params[name]),
                                distribution_json=text) for name, (dist, text) in dists.items()]
        if state != TrialState.FAIL:
            # Optuna gives a pruned trial its last intermediate value as its value.
            value = max(curve) if state == TrialState.COMPLETE else curve[-1]
            rows["values"].append(dict(trial_id=trial_id, objective=0, value=value,
                                       value_type="FINITE"))
        rows["steps"] += [dict(trial_id=trial_id, step=e + 1, intermediate_value=v,
                               intermediate_value_type="FINITE") for e, v in enumerate(curve)]
        rows["tuner"].append(dict(trial_id=trial_id, study_id=study_id, seed=number,
                                  best_epoch=1 + max(range(epochs), key=curve.__getitem__),
                                  epochs_run=epochs, outcome=state.name.lower(), device="cpu"))
        if len(rows["trials"]) == _CHUNK or number == n - 1:
            yield rows
            rows = {k: [] for k in rows}


def build_study(storage: TunerStorage, name: str, n_trials: int, steps: int = 20,
                seed: int = 0) -> int:
    """Create study ``name`` with Optuna, then bulk-insert ``n_trials`` trials into it."""
    study = optuna.create_study(study_name=name, storage=storage.optuna, direction="maximize")
    first = next_trial_id(storage)
    for rows in _batches(study_id_of(study), first, n_trials, steps, seed):
        insert_trials(storage, trial_rows=rows["trials"], params=rows["params"],
                      values=rows["values"], steps=rows["steps"], tuner_rows=rows["tuner"])
    return first


def check_with_optuna(storage: TunerStorage, name: str, first_id: int, n_trials: int,
                      seed: int = 0) -> None:
    """Optuna reads the bulk-inserted study back: its count, and one trial in full."""
    summary = {s.study_name: s for s in optuna.get_all_study_summaries(storage.optuna, False)}
    if summary[name].n_trials != n_trials:
        raise TunerError(f"Optuna counts {summary[name].n_trials} trials, not {n_trials}")
    trial = storage.optuna.get_trial(first_id)
    expected = next(_batches(0, first_id, 1, 20, seed))
    params = {p["param_name"]: SPACE[p["param_name"]].to_external_repr(p["param_value"])
              for p in expected["params"]}
    if trial.params != params or trial.number != 0:
        raise TunerError(f"Optuna reads trial 0 back as {trial.params}, not {params}")
    if trial.state.name != expected["trials"][0]["state"]:
        raise TunerError(f"Optuna reads trial 0's state as {trial.state.name}")


def _best_of(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def run_query_bench(url: str, command: Callable[[list[str]], tuple[int, str]],
                    n_trials: int = 100_000, steps: int = 20, repeat: int = 3,
                    say: Callable[[str], None] = print) -> list[Timing]:
    """Build the study in the (empty) database at ``url``, then time both sides; ``command``
    runs one ``tuner`` command line (without the program name) in this process and
    returns its exit code and output, as the CLI gives it."""
    storage = TunerStorage(url, heartbeat=False).open()
    name = f"bench-{n_trials}-{uuid.uuid4().hex[:6]}"
    began = time.perf_counter()
    first = build_study(storage, name, n_trials, steps)
    say(f"built {n_trials:,} trials x {len(SPACE)} params x {steps} steps in "
        f"{time.perf_counter() - began:.1f} s")
    check_with_optuna(storage, name, first, n_trials)
    say("Optuna reads the study back: trial count and trial 0's params and state match")

    def tuner(*args: str) -> Callable[[], None]:
        def run() -> None:
            code, output = command([*args, "--storage", url])
            if code != 0:
                raise TunerError(f"tuner {' '.join(args)} failed: {output}")
        return run

    best_s = _best_of(tuner("best", "--study", name, "--top", "10"), repeat)
    where_s = _best_of(tuner("trials", "--study", name, "--where", WHERE, "--limit", "50"), repeat)
    studies_s = _best_of(tuner("studies"), repeat)
    say("tuner queries timed; now Optuna's (trials_dataframe() loads every trial)")

    study = optuna.load_study(study_name=name, storage=url)
    best_trial_s = _best_of(lambda: optuna.load_study(study_name=name, storage=url).best_trial,
                            1)
    began = time.perf_counter()
    frame = study.trials_dataframe()
    frame_s = time.perf_counter() - began
    complete = frame[frame.state == "COMPLETE"]
    top_s = _best_of(lambda: complete.nlargest(10, "value"), 1)
    query_s = _best_of(lambda: frame.query(
        "params_optimizer == 'adam' and params_dropout > 0.3").head(50), 1)
    summaries_s = _best_of(lambda: optuna.get_all_study_summaries(url), 1)
    counts_s = _best_of(lambda: frame.state.value_counts(), 1)
    return [
        Timing("best --top 10", best_s, "trials_dataframe() + nlargest(10)", frame_s + top_s),
        Timing("best --top 10 (top 1 only)", best_s, "load_study().best_trial", best_trial_s),
        Timing(f'trials --where "{WHERE}" --limit 50', where_s,
               "trials_dataframe() + query() + head(50)", frame_s + query_s),
        Timing("studies", studies_s, "get_all_study_summaries() + trials_dataframe() "
               "state counts", summaries_s + frame_s + counts_s),
    ]
