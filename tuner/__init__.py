"""tuner: hyperparameter optimization of regularization, optimizers and schedules
for PyTorch models, built on Optuna.

>>> import tuner
>>> space = tuner.load_space("quick")
>>> sorted(tuner.OPTIMIZERS)
['adagrad', 'adam', 'adamw', 'momentum', 'rmsprop', 'sgd']
"""

from tuner.errors import (
    DataError,
    SpaceError,
    StorageError,
    StudyMismatchError,
    StudyNotFoundError,
    TunerError,
    UsageError,
)
from tuner.optim import build_optimizer, build_scheduler
from tuner.space import Space, load_space
from tuner.space._catalogue import OPTIMIZERS, SCHEDULES

__version__ = "0.1.0"

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
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
    "load_space",
]
