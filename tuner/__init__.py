"""tuner: hyperparameter optimization of regularization, optimizers and schedules
for PyTorch models, built on Optuna.

>>> import tuner
>>> space = tuner.load_space("quick")
>>> sorted(tuner.OPTIMIZERS)
['adagrad', 'adam', 'adamw', 'momentum', 'rmsprop', 'sgd']
"""

import importlib
from typing import TYPE_CHECKING, Any

from tuner.catalogue import OPTIMIZERS, SCHEDULES
from tuner.errors import (
    DataError,
    SpaceError,
    StorageError,
    StudyMismatchError,
    StudyNotFoundError,
    TunerError,
    UsageError,
)

if TYPE_CHECKING:
    from tuner.api import optimize
    from tuner.export.from_study import load_model
    from tuner.run.userloop import optimizer_for, penalty, regularize_step, scheduler_for
    from tuner.space import Space, load_space
    from tuner.train.config import Config
    from tuner.train.optim import build_optimizer, build_scheduler

# torch and Optuna load on first use, so that the command line starts fast.
_LAZY = {"build_optimizer": "tuner.train.optim", "build_scheduler": "tuner.train.optim",
         "Space": "tuner.space", "load_space": "tuner.space", "optimize": "tuner.api",
         "load_model": "tuner.export.from_study", "Config": "tuner.train.config",
         "optimizer_for": "tuner.run.userloop", "scheduler_for": "tuner.run.userloop",
         "penalty": "tuner.run.userloop", "regularize_step": "tuner.run.userloop"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tuner' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "Config",
    "DataError",
    "Space",
    "SpaceError",
    "StorageError",
    "StudyMismatchError",
    "StudyNotFoundError",
    "TunerError",
    "UsageError",
    "__version__",
    "build_optimizer",
    "build_scheduler",
    "load_model",
    "load_space",
    "optimize",
    "optimizer_for",
    "penalty",
    "regularize_step",
    "scheduler_for",
]
