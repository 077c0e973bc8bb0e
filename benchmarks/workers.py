"""Trials per second with 1, 2 and 4 workers, on SQLite and PostgreSQL, side by side.

    python benchmarks/workers.py --trials 40 [--postgres postgresql://postgres@127.0.0.1/test]

Every run is a fresh study of the same space (digits, small MLP, random sampler, no
pruning) so the work per trial is the same. Throughput is read from the database: the
finished trials over the time from the first trial's start to the last one's end, so
the workers' start-up (a Python process importing torch) is not counted. The figure of
merit is that rate and its ratio to one worker on the same storage. Run it on an
otherwise idle machine.
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


def run(storage: str, workers: int, trials: int, space: Path) -> float:
    study = f"bench-{workers}-{uuid.uuid4().hex[:6]}"
    subprocess.run([sys.executable, "-m", "tuner", "start", "--space", str(space), "--study",
                    study, "--storage", storage, "--trials", str(trials), "--workers",
                    str(workers), "--device", "cpu", "--quiet"], check=True,
                   stdout=subprocess.DEVNULL)
    trials_ = optuna.load_study(study_name=study, storage=storage.replace(
        "postgresql://", "postgresql+psycopg://", 1)).get_trials(deepcopy=False)
    done = [t for t in trials_ if t.datetime_complete is not None]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done))
    return len(done) / span.total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
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
            base = None
            for n in (int(w) for w in args.workers.split(",")):
                rate = run(url, n, args.trials, space)
                base = base or rate
                rows.append({"storage": name, "workers": n, "trials_per_s": round(rate, 3),
                             "vs_one_worker": round(rate / base, 2)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'storage':<9}{'workers':>8}{'trials/s':>10}{'vs 1':>7}")
    for r in rows:
        print(f"{r['storage']:<9}{r['workers']:>8}{r['trials_per_s']:>10.2f}"
              f"{r['vs_one_worker']:>7.2f}")


if __name__ == "__main__":
    main()
