"""Resident memory of one worker over many trials: it must stay flat.

    python benchmarks/memory.py --trials 300 [--engine fused --population 16]

Runs the trials in this process (the worker loop of `tuner start`) on a fresh SQLite
study and prints the resident set size every 25 trials, and the growth from trial 25
(after imports, the data copy and the first allocations) to the end.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from tuner.cli import quiet_optuna
from tuner.run.runner import Snapshot, run_study
from tuner.space import EngineSpec, parse_space
from tuner.storage import TunerStorage

SPACE = {
    "task": {"dataset": "digits", "model": "mlp", "epochs": 5},
    "sampler": {"name": "tpe", "n_startup_trials": 10},
    "pruner": {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 2},
    "params": {"hidden": {"low": 32, "high": 256, "log": True},
               "lr": {"low": 1e-3, "high": 1e-1, "log": True},
               "dropout": {"low": 0.0, "high": 0.5},
               "batchnorm": {"choices": [False, True]}},
}


def rss_mib() -> float:
    """Resident set size of this process (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--engine", choices=["sequential", "fused"], default="sequential")
    parser.add_argument("--population", type=int, default=16)
    args = parser.parse_args()
    quiet_optuna()
    samples: list[tuple[int, float]] = []

    def sample(s: Snapshot) -> None:
        if s.finished % 25 == 0 and (not samples or samples[-1][0] != s.finished):
            samples.append((s.finished, rss_mib()))
            print(f"trial {s.finished:4d}  rss {samples[-1][1]:8.1f} MiB", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        storage = TunerStorage(f"sqlite:///{Path(tmp) / 'mem.db'}").open()
        space = parse_space(SPACE, name="memory", source="benchmarks/memory.py")
        run_study(space, storage=storage, study_name="memory", budget=args.trials,
                  device=torch.device("cpu"), on_progress=sample,
                  engine=EngineSpec(args.engine, args.population))
    growth = samples[-1][1] - samples[0][1]
    print(f"growth from trial {samples[0][0]} to {samples[-1][0]}: {growth:+.1f} MiB")


if __name__ == "__main__":
    main()
