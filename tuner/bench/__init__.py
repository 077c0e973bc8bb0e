"""``tuner bench``: the canonical Optuna + PyTorch recipe against the tuner's engine.

Three variants run side by side in one process, on the same data, model, search
space, trial budget and seed: the canonical recipe (:mod:`tuner.bench._baseline`,
kept in the project as the reference), the tuner's engine with Optuna's in-memory
storage, and the tuner's engine on SQLite; with a population size, a fourth, the fused
population engine (:mod:`tuner.run.population`) on SQLite. Each gets epochs/s, samples/s, trials/s,
the share of its wall time spent in storage calls, its best validation accuracy, and
the fraction of the device's measured matmul peak its training steps reach.
``tuner bench query`` (:mod:`tuner.bench._query`) times the read-back commands, ``tuner
bench startup`` (:mod:`tuner.bench._startup`) a ``tuner start`` process's start-up, ``tuner
bench sampler`` (:mod:`tuner.bench._sampler`) the space's sampler as the study grows.

>>> from tuner.bench import format_result, run_bench
>>> result = run_bench(dataset="iris", trials=2, epochs=2)
>>> result.same_configs
True
"""

from tuner.bench._clock import StorageClock
from tuner.bench._peak import matmul_peak, train_flops_per_sample
from tuner.bench._query import run_query_bench
from tuner.bench._result import COLUMNS, BenchResult, Run, format_result
from tuner.bench._run import VARIANTS, run_bench
from tuner.bench._sampler import COLUMNS as SAMPLER_COLUMNS
from tuner.bench._sampler import SAMPLER_NAMES, SamplerRow, run_sampler_bench
from tuner.bench._sampler import bench_space as sampler_space
from tuner.bench._space import DATASETS, bench_space
from tuner.bench._startup import StartupRow, format_startup, run_startup_bench

__all__ = [
    "COLUMNS",
    "DATASETS",
    "SAMPLER_COLUMNS",
    "SAMPLER_NAMES",
    "VARIANTS",
    "BenchResult",
    "Run",
    "SamplerRow",
    "StartupRow",
    "StorageClock",
    "bench_space",
    "format_result",
    "format_startup",
    "matmul_peak",
    "run_bench",
    "run_query_bench",
    "run_sampler_bench",
    "run_startup_bench",
    "sampler_space",
    "train_flops_per_sample",
]
