"""Search quality at equal wall time: the fused engine against the sequential one.

    python benchmarks/fused_quality.py [--space population] [--seconds 60] [--seeds 0,1,2]

For each seed, one study per engine runs on the same space (a fresh SQLite database,
one CPU thread, this process) for ``--seconds`` of wall time. What counts is what each
engine finished inside that time: the best validation value among the trials that
completed within ``--seconds`` of the study's first trial starting (the fused engine
stops claiming at the deadline but lets its population finish; those late trials are
left out, as a sequential trial that ends late is). The figure of merit is the median
over the seeds of each engine's best value, and the trials each finished.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from tuner.cli import quiet_optuna
from tuner.run.runner import run_study
from tuner.space import EngineSpec, load_space
from tuner.storage import TunerStorage


def best_within(study: optuna.Study, seconds: float) -> tuple[float | None, int]:
    """The best value, and the number of finished trials, inside the window."""
    trials = [t for t in study.get_trials(deepcopy=False)
              if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if not trials:
        return None, 0
    end = min(t.datetime_start for t in trials) + timedelta(seconds=seconds)
    inside = [t for t in trials if t.datetime_complete <= end]
    values = [t.value for t in inside if t.state == TrialState.COMPLETE and t.value is not None]
    best = (max(values) if study.direction.name == "MAXIMIZE" else min(values)) if values else None
    return best, len(inside)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="population")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    quiet_optuna()
    engines = {"sequential": EngineSpec("sequential", precision=args.precision),
               "fused": EngineSpec("fused", args.population, args.precision)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        storage = TunerStorage(f"sqlite:///{Path(tmp) / 'quality.db'}").open()
        for seed in (int(s) for s in args.seeds.split(",")):
            space = replace(load_space(args.space, {"seed": seed}))
            for name, engine in engines.items():
                study = f"{name}-{seed}"
                run_study(space, storage=storage, study_name=study, budget=100_000,
                          device=torch.device("cpu"), timeout=args.seconds, engine=engine)
                best, finished = best_within(
                    optuna.load_study(study_name=study, storage=storage.optuna), args.seconds)
                rows.append({"seed": seed, "engine": name, "best_value": best,
                             "finished_trials": finished})
                if not args.json:
                    print(f"seed {seed} {name:<10} best {best} in {finished} trials",
                          flush=True)
    summary = {name: {
        "median_best": statistics.median(r["best_value"] for r in rows if r["engine"] == name),
        "median_trials": statistics.median(r["finished_trials"] for r in rows
                                           if r["engine"] == name)} for name in engines}
    if args.json:
        print(json.dumps({"seconds": args.seconds, "rows": rows, "summary": summary}, indent=2))
        return
    for name, s in summary.items():
        print(f"{name:<10} median best {s['median_best']:.4f}, median trials "
              f"{s['median_trials']:.0f} in {args.seconds:.0f} s")


if __name__ == "__main__":
    main()
