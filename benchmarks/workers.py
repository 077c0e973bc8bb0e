"""Trials per second with 1, 2 and 4 workers, on SQLite and PostgreSQL, side by side.

    python benchmarks/workers.py --trials 40 [--postgres postgresql://postgres@127.0.0.1/test]

Every run is a fresh study of the same tiny space (digits, small MLP, few epochs, random
sampler, no pruning) so the work per trial is the same; the figure of merit is trials/s
and its ratio to one worker on the same storage. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

SPACE = """
trials: 40
task: {dataset: digits, model: mlp, epochs: 5}
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
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tuner", "start", "--space", str(space), "--study",
                    study, "--storage", storage, "--trials", str(trials), "--workers",
                    str(workers), "--device", "cpu", "--quiet"], check=True,
                   stdout=subprocess.DEVNULL)
    return trials / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
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
