"""Does the auxiliary head help on digits? Same configuration, with and without it.

    python benchmarks/aux.py --seeds 10

Digits' built-in auxiliary task is predicting the 4x4 coarse image. For each seed the
same MLP (and the same initial weights and batch order) trains with aux_weight 0 and
with each given weight; the table shows mean and standard deviation of the best
validation accuracy and of the test accuracy at the best epoch.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from tuner.data.builtin import load_splits
from tuner.train.config import TrialConfig
from tuner.train.loop import build_for, evaluate, train
from tuner.train.metrics import METRICS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--weights", default="0,0.3,1.0")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_splits("digits", seed=0)
    metric = METRICS["accuracy"]
    print(f"{'aux_weight':>10}  {'val acc':>15}  {'test acc':>15}")
    for weight in (float(w) for w in args.weights.split(",")):
        vals, tests = [], []
        for seed in range(args.seeds):
            config = TrialConfig(epochs=60, hidden=64, layers=2, dropout=0.1, l2=1e-4,
                                 optimizer_hyper=(("lr", 1e-3),), aux_weight=weight,
                                 patience=10, seed=seed)
            torch.manual_seed(seed)
            model = build_for(config, data)
            result = train(model, data, config, metric=metric)
            _, test = evaluate(model, data.x_test, data.y_test, data.task, metric)
            vals.append(result.best_metric)
            tests.append(float(test))
        print(f"{weight:>10.2f}  {statistics.mean(vals):.4f} ± {statistics.stdev(vals):.4f}"
              f"  {statistics.mean(tests):.4f} ± {statistics.stdev(tests):.4f}", flush=True)


if __name__ == "__main__":
    main()
