"""Running the variants side by side, in one process, on the same data, space and budget.

The variants take turns, one trial each: on a shared machine whose load comes and
goes, every variant sees the same conditions, instead of one of them running while
another process is busy.
"""

from __future__ import annotations

import gc
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from tuner.bench._baseline import BaselineObjective, create_baseline_study
from tuner.bench._clock import StorageClock
from tuner.bench._engine import create_engine_study
from tuner.bench._peak import matmul_peak, train_flops_per_sample
from tuner.bench._result import BenchResult, Run
from tuner.bench._space import BATCH_SIZE, DATASETS, HIDDEN, LAYERS, bench_space
from tuner.data.builtin import Splits, load_splits
from tuner.errors import UsageError
from tuner.fused import onednn_products
from tuner.run.objective import Objective
from tuner.run.population import PopulationRun
from tuner.space import Space
from tuner.storage import TunerStorage, close_connections
from tuner.train.config import TrialConfig
from tuner.train.loop import build_for

VARIANTS = {
    "baseline": "the canonical recipe: DataLoader, .item() per batch, Optuna RDB on SQLite",
    "tuner-memory": "the tuner's engine, Optuna in-memory storage",
    "tuner-sqlite": "the tuner's engine, the tuner's SQLite storage (WAL, its own tables)",
    "tuner-fused": "the fused population engine (--population trials at once), the tuner's "
                   "SQLite storage",
}


def run_bench(*, dataset: str = "digits", trials: int = 20, epochs: int = 20, seed: int = 0,
              device: torch.device | None = None, population: int | None = None,
              precision: str = "fp32", compile: bool = False,
              samples: int | None = None, features: int | None = None,
              on_trial: Callable[[int], None] | None = None) -> BenchResult:
    """Run the baseline and the tuner's engine (in memory and on SQLite) on ``dataset``.

    Each variant runs ``trials`` trials of ``epochs`` epochs of the benchmark's space
    (:func:`~tuner.bench._space.bench_space`) with the same seed, and its trials are
    timed. Opening its storage and creating its study, one-time costs that a study's
    whole budget shares, are timed apart (``setup_s``). First, each variant runs one
    untimed trial of one epoch in a study of its own on the same storage, so that none
    of them pays for start-up costs (library initialization, the compilation of its
    SQL statements) inside its timed trials. ``on_trial(i)`` is called before the i-th
    round of timed trials (0-based).

    With ``population`` K, the fused engine runs too (``tuner-fused``), and the variants
    take turns K trials at a time: K sequential trials each, then one population of K.
    ``precision`` is the tuner variants' (the baseline trains in float32); with
    ``compile`` the sequential tuner variants compile each trial's model with
    ``torch.compile`` (the first compilation falls in the untimed warm-up).
    ``samples`` and ``features`` size the synthetic ``classification`` dataset.

    >>> result = run_bench(dataset="iris", trials=1, epochs=1)
    >>> [run.variant for run in result.runs]
    ['baseline', 'tuner-memory', 'tuner-sqlite']
    """
    if trials < 1 or epochs < 1:
        raise UsageError(f"`trials >= 1 and epochs >= 1` must hold, but got "
                         f"(trials={trials}, epochs={epochs})")
    if population is not None and population < 1:
        raise UsageError(f"`population >= 1` must hold, but got (population={population})")
    if dataset not in DATASETS:
        raise UsageError(f"--dataset: the benchmark needs a classification dataset (one of: "
                         f"{', '.join(DATASETS)}), but got {dataset!r}")
    if (samples is not None or features is not None) and dataset != "classification":
        raise UsageError(f"--samples and --features size the synthetic 'classification' "
                         f"dataset, but got --dataset {dataset}")
    device = device or torch.device("cpu")
    space = bench_space(dataset, epochs, seed, samples, features)
    task = space.task
    # The objective's own cached device copy: every variant trains on the same tensors.
    data = load_splits(task.dataset, seed, str(device), task.n_samples, task.n_features)
    peak = matmul_peak(device)
    flops = _flops_per_sample(data)
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
        names = [n for n in VARIANTS if n != "tuner-fused" or population is not None]
        variants = [_Variant.open(name, Path(tmp), data, device, population or 1, precision,
                                  compile) for name in names]
        rounds = _rounds(trials, population or 1)
        try:
            for variant in variants:
                variant.start(bench_space(dataset, 1, seed, samples, features), "warm-up",
                              timed=False)
                variant.run_trials(min(2, rounds[0]), timed=False)
            for variant in variants:
                variant.start(space, "bench")
            for i, size in enumerate(rounds):
                if on_trial is not None:
                    on_trial(i)
                for variant in variants:
                    variant.run_trials(size)
            runs = tuple(v.summary() for v in variants)
            configs = [v.configs() for v in variants]
        finally:
            for variant in variants:
                variant.close()
    return BenchResult(
        device=str(device), dataset=dataset, model=f"mlp {LAYERS}x{HIDDEN}, adam",
        population=population, precision=precision, compile=compile,
        trials=trials, epochs=epochs, seed=seed, threads=torch.get_num_threads(),
        matmul_peak=peak, train_flops_per_sample=flops,
        same_configs=all(c == configs[0] for c in configs), runs=runs,
        fused_matmul=(_fused_matmul(device, precision, population, data.x_train.dtype)
                      if population is not None else None))


def _fused_matmul(device: torch.device, precision: str, population: int,
                  dtype: torch.dtype) -> str | None:
    """The library the fused engine's float32 products run in on a CPU, as FusedMLP
    decides it for a population of the bench's MLP."""
    if device.type != "cpu" or precision != "fp32":
        return None
    return ("oneDNN" if onednn_products(population, HIDDEN, dtype, device)
            else "torch's default BLAS")


def _rounds(trials: int, size: int) -> list[int]:
    """Trials per round: ``size`` at a time, the last round what is left."""
    return [min(size, trials - start) for start in range(0, trials, size)]


Storage = optuna.storages.RDBStorage | optuna.storages.InMemoryStorage | TunerStorage


@dataclass
class _Variant:
    """One variant: its storage, its current study and objective, and its clocks."""

    name: str
    storage: Storage
    data: Splits
    device: torch.device
    population: int = 1
    precision: str = "fp32"
    compile: bool = False
    setup: StorageClock = field(default_factory=StorageClock)  # storage and study creation
    clock: StorageClock = field(default_factory=StorageClock)  # the timed trials
    study: optuna.Study | None = None
    objective: Callable[[optuna.Trial], float] | None = None
    # The baseline seeds torch once, at its start, as a script does: between its
    # trials its (CPU) random stream is kept aside, as if it ran in its own process.
    rng: torch.Tensor | None = None

    @classmethod
    def open(cls, name: str, folder: Path, data: Splits, device: torch.device,
             population: int = 1, precision: str = "fp32", compile: bool = False) -> _Variant:
        setup = StorageClock()
        with setup:
            storage: Storage
            if name == "baseline":  # Optuna's RDB storage with its default settings
                storage = optuna.storages.RDBStorage(f"sqlite:///{folder / 'optuna.db'}")
            elif name in ("tuner-sqlite", "tuner-fused"):  # the tuner's default storage
                storage = TunerStorage(f"sqlite:///{folder / f'{name}.db'}").open()
            else:
                storage = optuna.storages.InMemoryStorage()
        return cls(name, storage, data, device, population, precision, compile, setup=setup)

    def start(self, space: Space, study_name: str, timed: bool = True) -> None:
        """Create the study ``study_name`` of ``space`` and its objective."""
        with self.setup if timed else StorageClock():
            if isinstance(self.storage, optuna.storages.RDBStorage):
                self.study = create_baseline_study(self.storage, space.seed, study_name)
                self.objective = BaselineObjective(self.data, space.task.epochs, self.device)
                self.rng = torch.Generator().manual_seed(space.seed).get_state()
            else:
                self.study, recorder = create_engine_study(space, self.storage, study_name)
                self.objective = Objective(space, recorder, self.device,
                                           precision=self.precision, compile=self.compile)

    def run_trials(self, n: int, timed: bool = True) -> None:
        """Run ``n`` more trials of the current study: one by one, or, for the fused
        variant, as one population."""
        assert self.study is not None and self.objective is not None
        gc.collect()  # no variant pays for another's garbage
        clock = self.clock if timed else StorageClock()
        if self.name == "tuner-fused":
            assert isinstance(self.storage, TunerStorage)
            assert isinstance(self.objective, Objective)
            done = len(self.study.get_trials(deepcopy=False))
            with clock:
                PopulationRun(self.study, self.storage, self.objective, done + n,
                              self.population).run()
            return
        if self.rng is None:
            with clock:
                self.study.optimize(self.objective, n_trials=n)
            return
        outside = torch.get_rng_state()
        torch.set_rng_state(self.rng)
        try:
            with clock:
                self.study.optimize(self.objective, n_trials=n)
        finally:
            self.rng = torch.get_rng_state()
            torch.set_rng_state(outside)

    def summary(self) -> Run:
        assert self.study is not None
        trials = self.study.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        epochs = sum(len(t.intermediate_values) for t in trials)
        return Run(self.name, VARIANTS[self.name], wall_s=self.clock.wall,
                   storage_s=self.clock.seconds, setup_s=self.setup.wall,
                   trials=len(finished), epochs=epochs,
                   samples=epochs * self.data.x_train.shape[0],
                   best_value=max(values) if values else None)

    def configs(self) -> list[dict[str, object]]:
        assert self.study is not None
        return [t.params for t in self.study.get_trials(deepcopy=False)]

    def close(self) -> None:
        if not isinstance(self.storage, optuna.storages.InMemoryStorage):
            close_connections(self.storage)


def _flops_per_sample(data: Splits) -> float:
    config = TrialConfig(epochs=1, hidden=HIDDEN, layers=LAYERS, batch_size=BATCH_SIZE)
    model = build_for(config, data)
    n = min(BATCH_SIZE, data.x_train.shape[0])
    return train_flops_per_sample(model, data.x_train[:n], data.y_train[:n], data.task)
