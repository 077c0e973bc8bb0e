"""Trials per second with 1, 2 and 4 workers, on SQLite and PostgreSQL, side by side.

    python benchmarks/workers.py --trials 200 [--postgres postgresql://postgres@127.0.0.1/test]

Every run is a fresh study of the same space (digits, small MLP, random sampler, no
pruning) so the work per trial is the same. Throughput is read from the database, in
the window where every worker is at work: from the moment the last worker to start
began its first trial to the moment the first worker to finish ended its last one
(each trial records the worker, host:pid, that ran it). Workers start at different
times (each imports torch), and the last ones finish alone; neither is what N workers
sustain. The figure of merit is the trials finished in that window per second, and its
ratio to one worker on the same storage; the whole run's rate (first start to last end)
is printed beside it. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import optuna

SPACE = """
trials: 40
task: {dataset: digits, model: mlp, epochs: 10}
sampler: {name: random}
pruner: {name: none}
params:
  hidden: 64
  layers: 1
  lr: {low: 1.0e-3, high: 1.0e-1, log: true}
  dropout: {low: 0.0, high: 0.5}
"""


def run(storage: str, workers: int, trials: int, space: Path) -> tuple[float, float]:
    study = f"bench-{workers}-{uuid.uuid4().hex[:6]}"
    subprocess.run([sys.executable, "-m", "tuner", "start", "--space", str(space), "--study",
                    study, "--storage", storage, "--trials", str(trials), "--workers",
                    str(workers), "--device", "cpu", "--quiet"], check=True,
                   stdout=subprocess.DEVNULL)
    trials_ = optuna.load_study(study_name=study, storage=storage.replace(
        "postgresql://", "postgresql+psycopg://", 1)).get_trials(deepcopy=False)
    done = [t for t in trials_ if t.datetime_complete is not None]
    span = max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    return steady_rate(done), len(done) / span.total_seconds()


def steady_rate(done: list[optuna.trial.FrozenTrial]) -> float:
    """Trials per second while every worker was at work (see the module's docstring)."""
    by_worker: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for trial in done:
        by_worker.setdefault(trial.user_attrs.get("worker", "?"), []).append(trial)
    start = max(min(t.datetime_start for t in ts) for ts in by_worker.values())
    end = min(max(t.datetime_complete for t in ts) for ts in by_worker.values())
    inside = [t for t in done if start <= t.datetime_complete <= end]
    return len(inside) / (end - start).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--postgres", default=os.environ.get(
        "TUNER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        space = Path(tmp) / "bench.yaml"
        space.write_text(SPACE)
        storages = {"sqlite": f"sqlite:///{Path(tmp) / 'bench.db'}", "postgres": args.postgres}
        rows = []
        for name, url in storages.items():
            base = whole_base = None
            for n in (int(w) for w in args.workers.split(",")):
                rate, whole = run(url, n, args.trials, space)
                base, whole_base = base or rate, whole_base or whole
                rows.append({"storage": name, "workers": n, "trials_per_s": round(rate, 3),
                             "vs_one_worker": round(rate / base, 2),
                             "whole_run_trials_per_s": round(whole, 3),
                             "whole_run_vs_one_worker": round(whole / whole_base, 2)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'storage':<9}{'workers':>8}{'trials/s':>10}{'vs 1':>7}"
          f"{'whole run':>11}{'vs 1':>7}")
    for r in rows:
        print(f"{r['storage']:<9}{r['workers']:>8}{r['trials_per_s']:>10.2f}"
              f"{r['vs_one_worker']:>7.2f}{r['whole_run_trials_per_s']:>11.2f}"
              f"{r['whole_run_vs_one_worker']:>7.2f}")


if __name__ == "__main__":
    main()
