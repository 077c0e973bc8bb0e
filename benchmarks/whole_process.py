"""The whole process: the canonical recipe's script against `tuner start`, as a user times them.

    python benchmarks/whole_process.py [--trials 30] [--epochs 20] [--seeds 3] \
        [--population 32] [--device cpu] [--format table|csv|json]

For each seed (0, 1, ... up to --seeds), three processes run one after another, each on
a fresh SQLite file, with the same budget of trials and epochs:

* `recipe`: `python benchmarks/recipe.py`, a plain Optuna + PyTorch script (TPE, the
  median pruner, a DataLoader loop, `trial.report` every epoch);
* `sequential`: `tuner start --space benchmarks/recipe_space.yaml`, the same search;
* `fused`: the same with `--engine fused --population K`.

Each is timed from outside, interpreter start-up and exit included, as `time` would time
it; the variants take turns (their order rotates from seed to seed) so that a change in
the machine's load falls on all of them. The best value of each run is read back from its
database with Optuna. The summary gives each variant's median wall time over the seeds,
its speedup (the recipe's median over its median) against the start-up issue's targets
(3x for the sequential engine, 8x for the fused one), the same for the study alone (its
first trial's start to its last trial's end, from the database: the rest of the wall time
is the process's start-up and exit), and its median best value against the recipe's
(within 0.01). Per-run lines go to stderr as the runs finish.

It is a script rather than a `tuner bench` option because what it times are whole
processes, one of them a script with nothing of the tuner in it, which is meant to be read
and run on its own; `tuner bench` races the engines inside one process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tuner.formatting import format_rows

HERE = Path(__file__).resolve().parent
RECIPE = HERE / "recipe.py"
SPACE = HERE / "recipe_space.yaml"
STUDY = "whole-process"
VARIANTS = ("recipe", "sequential", "fused")
TARGETS = {"sequential": 3.0, "fused": 8.0}  # speedup over the recipe, whole process
VALUE_TOLERANCE = 0.01  # of the recipe's best value
SUMMARY = ("variant", "median_wall_s", "speedup", "target", "median_study_s", "study_speedup",
           "median_best", "best_vs_recipe", "walls_s", "bests")


def command(variant: str, args: argparse.Namespace, seed: int, url: str) -> list[str]:
    """The command line of one run."""
    budget = ["--trials", str(args.trials), "--epochs", str(args.epochs), "--seed", str(seed),
              "--storage", url, "--study", STUDY, "--device", args.device]
    if variant == "recipe":
        return [sys.executable, str(RECIPE), *budget]
    engine = ["--engine", "sequential"] if variant == "sequential" else [
        "--engine", "fused", "--population", str(args.population)]
    return [sys.executable, "-m", "tuner", "start", "--space", str(SPACE), *budget, *engine,
            "-q"]


def run(variant: str, args: argparse.Namespace, seed: int, folder: Path) -> dict[str, object]:
    """One run, timed from outside; its best value and finished trials, from its database."""
    url = f"sqlite:///{folder / f'{variant}-{seed}.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
    began = time.perf_counter()
    done = subprocess.run(command(variant, args, seed, url), cwd=folder, env=env,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        sys.exit(f"{variant}, seed {seed}: exit code {done.returncode}\n{done.stderr}")
    study = optuna.load_study(study_name=STUDY, storage=url)
    finished = [t for t in study.get_trials(deepcopy=False)
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    # The study's own time, from its first trial's start to its last trial's end, as the
    # database has them: the rest of the wall time is the process's start-up and exit.
    ends = [t.datetime_complete for t in finished if t.datetime_complete is not None]
    starts = [t.datetime_start for t in finished if t.datetime_start is not None]
    study_s = (max(ends) - min(starts)).total_seconds()
    return {"variant": variant, "seed": seed, "wall_s": round(wall, 3),
            "study_s": round(study_s, 3), "best_value": study.best_value,
            "finished": len(finished)}


def summarize(runs: list[dict[str, object]]) -> list[dict[str, object]]:
    """One row per variant: its median wall time and best value, against the recipe's."""
    def of(variant: str, key: str) -> list[float]:
        return [float(r[key]) for r in runs if r["variant"] == variant]  # type: ignore[arg-type]

    recipe_wall = statistics.median(of("recipe", "wall_s"))
    recipe_study = statistics.median(of("recipe", "study_s"))
    recipe_best = statistics.median(of("recipe", "best_value"))
    rows: list[dict[str, object]] = []
    for variant in VARIANTS:
        wall = statistics.median(of(variant, "wall_s"))
        study = statistics.median(of(variant, "study_s"))
        best = statistics.median(of(variant, "best_value"))
        target = TARGETS.get(variant)
        rows.append({
            "variant": variant, "median_wall_s": round(wall, 2),
            "speedup": round(recipe_wall / wall, 2),
            "target": f">= {target}x" if target else "",
            "median_study_s": round(study, 2),
            "study_speedup": round(recipe_study / study, 2),
            "median_best": round(best, 4),
            "best_vs_recipe": round(best - recipe_best, 4),
            "walls_s": " ".join(f"{w:.1f}" for w in of(variant, "wall_s")),
            "bests": " ".join(f"{b:.4f}" for b in of(variant, "best_value")),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30, help="Trials per run (30).")
    parser.add_argument("--epochs", type=int, default=20, help="Epochs per trial (20).")
    parser.add_argument("--seeds", type=int, default=3, help="Seeds 0 to N-1 (3).")
    parser.add_argument("--population", type=int, default=32,
                        help="The fused engine's population (32).")
    parser.add_argument("--device", default="cpu", help="Where every run trains (cpu).")
    parser.add_argument("--format", dest="fmt", choices=("table", "csv", "json"),
                        default="table")
    args = parser.parse_args()
    print(f"{args.trials} trials x {args.epochs} epochs, seeds 0-{args.seeds - 1}, "
          f"{args.device}, fused population {args.population}; load average "
          f"{os.getloadavg()[0]:.2f} (1 min) at the start", file=sys.stderr)
    runs = []
    with tempfile.TemporaryDirectory(prefix="tuner-whole-process-") as tmp:
        for seed in range(args.seeds):
            order = VARIANTS[seed % 3:] + VARIANTS[:seed % 3]
            for variant in order:
                runs.append(run(variant, args, seed, Path(tmp)))
                r = runs[-1]
                print(f"seed {seed} {variant:<10} {r['wall_s']:7.2f} s (the study "
                      f"{r['study_s']:.2f} s)  best "
                      f"{r['best_value']:.4f}  {r['finished']} trials", file=sys.stderr,
                      flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at the end", file=sys.stderr)
    print(format_rows(summarize(runs), SUMMARY, args.fmt), end="")
    print(f"(targets: the speedups above; median_best within {VALUE_TOLERANCE} of the "
          "recipe's)", file=sys.stderr)


if __name__ == "__main__":
    main()
