"""The one search space every variant of the benchmark samples from.

A fixed MLP, Adam, and two searched parameters (dropout, then the learning rate),
drawn by a seeded random sampler with no pruning and no early stopping: with the
same seed, the baseline and the engine ask for the same parameters in the same order
and so train the same configurations for the same number of epochs.
"""

from __future__ import annotations

from tuner.space import Space, parse_space

HIDDEN = 128  # units per hidden layer
LAYERS = 2
BATCH_SIZE = 64
DROPOUT = (0.0, 0.5)
LR = (1e-4, 1e-1)  # log scale

# The datasets the benchmark accepts: classification, so its value is an accuracy.
DATASETS = ("digits", "wine", "breast_cancer", "iris", "classification")


def bench_space(dataset: str = "digits", epochs: int = 20, seed: int = 0,
                samples: int | None = None, features: int | None = None) -> Space:
    """The benchmark's search space on ``dataset``; ``samples`` and ``features`` size the
    synthetic ``classification`` dataset (default: the task's defaults).

    >>> from tuner.space import Fixed
    >>> [p.name for p in bench_space().params if not isinstance(p, Fixed)]
    ['dropout', 'lr']
    """
    return parse_space({
        "description": "tuner bench: fixed MLP, Adam; dropout and learning rate searched",
        "seed": seed,
        "task": {"dataset": dataset, "model": "mlp", "epochs": epochs, "metric": "accuracy",
                 **({"n_samples": samples} if samples is not None else {}),
                 **({"n_features": features} if features is not None else {})},
        "sampler": {"name": "random"},
        "pruner": {"name": "none"},
        "params": {
            "hidden": HIDDEN,
            "layers": LAYERS,
            "batch_size": BATCH_SIZE,
            "dropout": {"low": DROPOUT[0], "high": DROPOUT[1]},
            "lr": {"low": LR[0], "high": LR[1], "log": True},
            "optimizer": "adam",
        },
    }, name="bench", source="tuner bench")
