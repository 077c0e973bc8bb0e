"""Model-epochs per second: the fused population engine against the sequential tuner loop
and the canonical DataLoader recipe, on the same configs.

    python benchmarks/fused.py [--population 32] [--epochs 5] [--threads 1] [--repeats 3]

Task: digits (1077 training rows), MLP hidden 128 x 2 layers, batch 64, float32, CPU.
Two sets of K configs (seeds 0..K-1, values drawn from a fixed RNG):

* ``plain``: adam/adamw with per-member lr, betas and l2; cosine or step schedules.
* ``dropout``: the same plus Bernoulli dropout in [0.1, 0.5] and input noise.

Every engine trains the same K configs for the same epochs; the figure of merit is
model-epochs per second, K * epochs / seconds (including each engine's per-epoch
validation pass), by wall clock and by process CPU time. Engines run interleaved,
``--repeats`` times, and the best time of each is kept, because a shared machine adds
noise only in one direction. Pruning and early stopping are off.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from tuner.data.builtin import Splits, load_splits
from tuner.fused import train_population
from tuner.train.config import TrialConfig
from tuner.train.loop import build_for, train
from tuner.train.metrics import METRICS

METRIC = METRICS["accuracy"]


def configs(kind: str, k: int, epochs: int) -> list[TrialConfig]:
    rng = random.Random(0)
    out = []
    for seed in range(k):
        values = {"hidden": 128, "layers": 2, "batch_size": 64,
                  "optimizer": rng.choice(["adam", "adamw"]),
                  "lr": 10 ** rng.uniform(-4, -2), "beta1": rng.uniform(0.8, 0.95),
                  "l2": rng.choice([0.0, 10 ** rng.uniform(-5, -3)]),
                  "schedule": rng.choice(["cosine", "step"]), "step_size": 2}
        if kind == "dropout":
            values |= {"dropout": rng.uniform(0.1, 0.5), "input_noise": rng.uniform(0, 0.2)}
        out.append(TrialConfig.from_values(values, epochs=epochs, seed=seed))
    return out


def run_sequential(cfgs: list[TrialConfig], data: Splits) -> None:
    for config in cfgs:
        torch.manual_seed(config.seed)
        train(build_for(config, data), data, config, metric=METRIC)


def run_fused(cfgs: list[TrialConfig], data: Splits) -> None:
    train_population(cfgs, data, metric=METRIC)


def run_canonical(cfgs: list[TrialConfig], data: Splits) -> None:
    """Optuna's PyTorch example, in spirit: a DataLoader loop, per-epoch evaluation
    with one ``.item()`` per validation batch, the trial's optimizer (no penalties)."""
    for config in cfgs:
        torch.manual_seed(config.seed)
        model = build_for(config, data)
        hyper = dict(config.optimizer_hyper)
        cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        optimizer = cls(model.parameters(), **hyper)
        train_loader = DataLoader(TensorDataset(data.x_train, data.y_train),
                                  batch_size=config.batch_size, shuffle=True)
        val_loader = DataLoader(TensorDataset(data.x_val, data.y_val),
                                batch_size=config.batch_size)
        for _ in range(config.epochs):
            model.train()
            for xb, yb in train_loader:
                optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                optimizer.step()
            model.eval()
            correct = 0
            with torch.no_grad():
                for xb, yb in val_loader:
                    correct += (model(xb).argmax(1) == yb).sum().item()
            _ = correct / len(val_loader.dataset)  # type: ignore[arg-type]


ENGINES: dict[str, Callable[[list[TrialConfig], Splits], None]] = {
    "fused": run_fused, "sequential": run_sequential, "canonical": run_canonical}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kinds", default="plain,dropout")
    parser.add_argument("--engines", default="fused,sequential,canonical")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_splits("digits", seed=0)
    rows = []
    for kind in args.kinds.split(","):
        cfgs = configs(kind, args.population, args.epochs)
        run_fused(cfgs[:2], data)  # warm-up: allocator, MKL, imports
        wall = {name: float("inf") for name in args.engines.split(",")}
        cpu = dict(wall)
        for _ in range(args.repeats):
            for name in wall:
                start, start_cpu = time.perf_counter(), time.process_time()
                ENGINES[name](cfgs, data)
                wall[name] = min(wall[name], time.perf_counter() - start)
                cpu[name] = min(cpu[name], time.process_time() - start_cpu)
        row: dict[str, object] = {"configs": kind, "threads": torch.get_num_threads(),
                                  "K": len(cfgs), "epochs": args.epochs}
        # Wall time is what a user waits; CPU time (all threads) is what a busy shared
        # machine distorts least: with one thread it is the figure to compare.
        for clock, seconds in (("wall", wall), ("cpu", cpu)):
            rate = {name: len(cfgs) * args.epochs / s for name, s in seconds.items()}
            row |= {f"{n}_{clock}": round(r, 1) for n, r in rate.items()}
            for other in rate:
                if other != "fused" and "fused" in rate:
                    row[f"fused_vs_{other}_{clock}"] = round(rate["fused"] / rate[other], 2)
        rows.append(row)
        if not args.json:
            print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
