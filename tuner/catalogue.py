"""What the search space may vary: every parameter the tuner knows, its type and domain.

This table is the single source of truth for parameter names. The YAML loader checks
every value and range against it, and ``TrialConfig`` takes its defaults from it, so a
new technique is added here once.

The rest of the product's vocabulary is named here too (models, datasets and metrics,
engines, precisions, trial states, the default storage), so that the command line and the
space reader list and check them without importing torch or the database layer: this
module imports nothing but the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

OPTIMIZERS = ("sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw")
SCHEDULES = ("none", "step", "multistep", "exponential", "cosine", "plateau")
DROPOUT_KINDS = ("bernoulli", "gaussian")
MODELS = ("mlp", "cnn")
# How a study trains its trials: one at a time, or many fused into one network; and at
# what precision.
ENGINES = ("sequential", "fused")
PRECISIONS = ("fp32", "bf16", "fp16")


class DatasetKind(NamedTuple):
    """What a built-in dataset is: its ``task`` (classification or regression), and
    whether its rows are images (a CNN can train on it)."""

    task: str
    image: bool = False


# The built-in datasets (their loaders live in tuner.data.builtin, which checks it has each
# one; tests check that it agrees on what each is): named here too so that the command line
# can list them, and the space reader check a space against them, without importing torch.
DATASET_KINDS: dict[str, DatasetKind] = {
    "digits": DatasetKind("classification", image=True),
    "wine": DatasetKind("classification"),
    "breast_cancer": DatasetKind("classification"),
    "iris": DatasetKind("classification"),
    "diabetes": DatasetKind("regression"),
    "classification": DatasetKind("classification"),
    "regression": DatasetKind("regression"),
}
DATASET_NAMES = tuple(DATASET_KINDS)


class MetricKind(NamedTuple):
    """What a built-in validation metric is for (``task``) and which way is better."""

    task: str
    direction: str  # "maximize" or "minimize"


# The built-in validation metrics (computed in tuner.train.metrics, whose METRICS is built
# from this table), named here so that a space is checked without importing torch.
METRIC_KINDS: dict[str, MetricKind] = {
    "accuracy": MetricKind("classification", "maximize"),
    "cross_entropy": MetricKind("classification", "minimize"),
    "rmse": MetricKind("regression", "minimize"),
    "mae": MetricKind("regression", "minimize"),
}

# Trial states as Optuna stores them, by the lower-case names the tuner prints and
# `tuner trials --state` takes (tuner.storage.optuna_tables reads them).
TRIAL_STATES = ("complete", "pruned", "running", "fail", "waiting")

# Where studies are kept unless --storage / TUNER_STORAGE says otherwise, and the largest
# integer a database column holds (SQLite's integers, PostgreSQL's BIGINT): tuner.storage
# gives them out; named here so that the command line's options need not import it.
DEFAULT_STORAGE = "sqlite:///storage/tuner.db"
DB_INT_MAX = 2 ** 63 - 1

# The columns of a trial row in `tuner trials` (and `--where`) besides its parameters: a
# parameter of yours may not take one of these names.
TRIAL_COLUMNS = ("number", "state", "value", "duration", "best_epoch", "epochs_run", "seed",
                 "test_metric", "datetime_start", "datetime_complete")

# Hyper-parameters that exist only under one optimizer or one schedule (conditionals).
OPTIMIZER_HYPER: dict[str, tuple[str, ...]] = {
    "sgd": ("lr",),
    "momentum": ("lr", "momentum"),
    "adagrad": ("lr",),
    "rmsprop": ("lr", "alpha"),
    "adam": ("lr", "beta1", "beta2"),
    "adamw": ("lr", "beta1", "beta2", "weight_decay"),
}
SCHEDULE_HYPER: dict[str, tuple[str, ...]] = {
    "none": (),
    "step": ("step_size", "gamma"),
    "multistep": ("milestones", "gamma"),
    "exponential": ("gamma",),
    "cosine": ("T_max", "eta_min"),
    "plateau": ("factor", "patience"),
}
CONDITIONAL_PARENTS = {"optimizer": OPTIMIZER_HYPER, "schedule": SCHEDULE_HYPER}


@dataclass(frozen=True)
class Rule:
    """The type and domain of one parameter.

    ``kind`` is ``float``, ``int``, ``bool``, ``choice`` (one of ``options``) or
    ``milestones`` (an increasing list of positive epochs). ``check`` tests a scalar
    value, and ``text`` states the rule it enforces for error messages.
    """

    kind: str
    default: Any
    text: str = ""
    check: Callable[[Any], bool] = lambda v: True
    options: tuple[Any, ...] = ()
    nullable: bool = False

    @property
    def searchable_range(self) -> bool:
        return self.kind in ("float", "int")


def _nonneg(v: float) -> bool:
    return v >= 0


def _positive(v: float) -> bool:
    return v > 0


def _unit_open(v: float) -> bool:
    return 0 <= v < 1


CATALOGUE: dict[str, Rule] = {
    # capacity
    "hidden": Rule("int", 128, "hidden >= 1", lambda v: v >= 1),
    "layers": Rule("int", 2, "layers >= 1", lambda v: v >= 1),
    "batch_size": Rule("int", 64, "batch_size >= 1", lambda v: v >= 1),
    # penalties and noise
    "l1": Rule("float", 0.0, "l1 >= 0", _nonneg),
    "l2": Rule("float", 0.0, "l2 >= 0", _nonneg),
    "dropout": Rule("float", 0.0, "0 <= dropout < 0.9", lambda v: 0 <= v < 0.9),
    "dropout_kind": Rule("choice", "bernoulli", options=DROPOUT_KINDS),
    "batchnorm": Rule("bool", False),
    "input_noise": Rule("float", 0.0, "input_noise >= 0", _nonneg),
    "augment": Rule("bool", False),
    "max_norm": Rule("float", None, "max_norm > 0 (or null for none)", _positive, nullable=True),
    # multi-task: weight of the auxiliary head's loss (0: no auxiliary head)
    "aux_weight": Rule("float", 0.0, "aux_weight >= 0", _nonneg),
    # optimizer and its conditionals
    "optimizer": Rule("choice", "adam", options=OPTIMIZERS),
    "lr": Rule("float", 1e-3, "lr > 0", _positive),
    "momentum": Rule("float", 0.9, "0 <= momentum < 1", _unit_open),
    "alpha": Rule("float", 0.99, "0 < alpha < 1", lambda v: 0 < v < 1),
    "beta1": Rule("float", 0.9, "0 <= beta1 < 1", _unit_open),
    "beta2": Rule("float", 0.999, "0 <= beta2 < 1", _unit_open),
    "weight_decay": Rule("float", 1e-2, "weight_decay >= 0", _nonneg),
    # schedule and its conditionals
    "schedule": Rule("choice", "none", options=SCHEDULES),
    "step_size": Rule("int", 10, "step_size >= 1", lambda v: v >= 1),
    "gamma": Rule("float", 0.5, "0 < gamma <= 1", lambda v: 0 < v <= 1),
    "milestones": Rule("milestones", (10, 20), "an increasing list of epochs >= 1"),
    "T_max": Rule("int", None, "T_max >= 1 (default: the task's epochs)", lambda v: v >= 1,
                  nullable=True),
    "eta_min": Rule("float", 0.0, "eta_min >= 0", _nonneg),
    "factor": Rule("float", 0.5, "0 < factor < 1", lambda v: 0 < v < 1),
    "patience": Rule("int", 3, "patience >= 0", lambda v: v >= 0),
}


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
