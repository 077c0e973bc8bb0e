"""Running the variants side by side, in one process, on the same data, space and budget.

The variants take turns, one trial each: on a shared machine whose load comes and
goes, every variant sees the same conditions, instead of one of them running while
another process is busy.
"""

from __future__ import annotations

import gc
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from tuner.bench._baseline import BaselineObjective, create_baseline_study
from tuner.bench._clock import StorageClock
from tuner.bench._engine import create_engine_study
from tuner.bench._peak import matmul_peak, train_flops_per_sample
from tuner.bench._result import BenchResult, Run
from tuner.bench._space import BATCH_SIZE, HIDDEN, LAYERS, bench_space
from tuner.config import TrialConfig
from tuner.data import Splits, load_splits
from tuner.errors import UsageError
from tuner.objective import Objective
from tuner.space import Space
from tuner.storage import TunerStorage
from tuner.train import build_for

VARIANTS = {
    "baseline": "the canonical recipe: DataLoader, .item() per batch, Optuna RDB on SQLite",
    "tuner-memory": "the tuner's engine, Optuna in-memory storage",
    "tuner-sqlite": "the tuner's engine, the tuner's SQLite storage (WAL, its own tables)",
}


def run_bench(*, dataset: str = "digits", trials: int = 20, epochs: int = 20, seed: int = 0,
              device: torch.device | None = None,
              on_trial: Callable[[int], None] | None = None) -> BenchResult:
    """Run the baseline and the tuner's engine (in memory and on SQLite) on ``dataset``.

    Each variant runs ``trials`` trials of ``epochs`` epochs of the benchmark's space
    (:func:`~tuner.bench._space.bench_space`) with the same seed. Its trials are timed;
    creating its storage and study, a one-time cost that a study's whole budget shares,
    is timed apart (``setup_s``). A tiny untimed round comes first, so that no variant
    pays for one-time start-up costs (library initialization, SQL statement
    compilation) that another then reuses.
    ``on_trial(i)`` is called before the i-th round of trials (0-based).

    >>> result = run_bench(dataset="iris", trials=1, epochs=1)
    >>> [run.variant for run in result.runs]
    ['baseline', 'tuner-memory', 'tuner-sqlite']
    """
    if trials < 1 or epochs < 1:
        raise UsageError(f"`trials >= 1 and epochs >= 1` must hold, but got "
                         f"(trials={trials}, epochs={epochs})")
    device = device or torch.device("cpu")
    space = bench_space(dataset, epochs, seed)
    task = space.task
    # The objective's own cached device copy: every variant trains on the same tensors.
    data = load_splits(task.dataset, seed, str(device), task.n_samples, task.n_features)
    peak = matmul_peak(device)
    flops = _flops_per_sample(data)
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
        for variant in _run_all(Path(tmp) / "warm-up", bench_space(dataset, 1, seed), data, 1,
                                device):
            variant.close()
        variants = _run_all(Path(tmp) / "timed", space, data, trials, device, on_trial)
        runs = tuple(v.summary(data) for v in variants)
        configs = [v.configs() for v in variants]
        for variant in variants:
            variant.close()
    return BenchResult(
        device=str(device), dataset=dataset, model=f"mlp {LAYERS}x{HIDDEN}, adam",
        trials=trials, epochs=epochs, seed=seed, threads=torch.get_num_threads(),
        matmul_peak=peak, train_flops_per_sample=flops,
        same_configs=all(c == configs[0] for c in configs), runs=runs)


@dataclass
class _Variant:
    """One variant's study and objective, and the clock that times it."""

    name: str
    study: optuna.Study
    objective: Callable[[optuna.Trial], float]
    setup: StorageClock  # creating the storage and the study
    clock: StorageClock  # the trials
    # The baseline seeds torch once, at its start, as a script does: between its
    # trials its (CPU) random stream is kept aside, as if it ran in its own process.
    rng: torch.Tensor | None = None
    storage: TunerStorage | None = None

    def run_trial(self) -> None:
        gc.collect()  # no variant pays for another's garbage
        if self.rng is None:
            with self.clock:
                self.study.optimize(self.objective, n_trials=1)
            return
        outside = torch.get_rng_state()
        torch.set_rng_state(self.rng)
        try:
            with self.clock:
                self.study.optimize(self.objective, n_trials=1)
        finally:
            self.rng = torch.get_rng_state()
            torch.set_rng_state(outside)

    def summary(self, data: Splits) -> Run:
        trials = self.study.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        epochs = sum(len(t.intermediate_values) for t in trials)
        return Run(self.name, VARIANTS[self.name], wall_s=self.clock.wall,
                   storage_s=self.clock.seconds, setup_s=self.setup.wall,
                   trials=len(finished), epochs=epochs, samples=epochs * data.x_train.shape[0],
                   best_value=max(values) if values else None)

    def configs(self) -> list[dict[str, object]]:
        return [t.params for t in self.study.get_trials(deepcopy=False)]

    def close(self) -> None:
        if self.storage is not None:
            self.storage.engine.dispose()


def _run_all(folder: Path, space: Space, data: Splits, trials: int, device: torch.device,
             on_trial: Callable[[int], None] | None = None) -> list[_Variant]:
    folder.mkdir()
    variants = []
    for name in VARIANTS:
        setup = StorageClock()
        with setup:
            if name == "baseline":
                study = create_baseline_study(f"sqlite:///{folder / 'optuna.db'}", space.seed)
                variants.append(_Variant(
                    name, study, BaselineObjective(data, space.task.epochs, device), setup,
                    StorageClock(), rng=torch.Generator().manual_seed(space.seed).get_state()))
                continue
            url = f"sqlite:///{folder / 'tuner.db'}" if name == "tuner-sqlite" else None
            study, recorder = create_engine_study(space, url)
        variants.append(_Variant(name, study, Objective(space, recorder, device), setup,
                                 StorageClock(),
                                 storage=recorder if isinstance(recorder, TunerStorage) else None))
    for i in range(trials):
        if on_trial is not None:
            on_trial(i)
        for variant in variants:
            variant.run_trial()
    return variants


def _flops_per_sample(data: Splits) -> float:
    config = TrialConfig(epochs=1, hidden=HIDDEN, layers=LAYERS, batch_size=BATCH_SIZE)
    model = build_for(config, data)
    n = min(BATCH_SIZE, data.x_train.shape[0])
    return train_flops_per_sample(model, data.x_train[:n], data.y_train[:n], data.task)
