"""The study database: Optuna's schema plus the tuner's own tables, one engine.

Every SQL statement the tuner runs is here (and in :mod:`tuner.queries`, which compiles
the query language over these tables); every use of Optuna's private API is in
:mod:`tuner.storage.optuna_compat`.
"""

from tuner.catalogue import DB_INT_MAX, DEFAULT_STORAGE
from tuner.storage._bulk import insert_trials, next_trial_id
from tuner.storage._copy import copy_study
from tuner.storage._fast import StudyStorage, TunerRDBStorage
from tuner.storage._lock import database_lock
from tuner.storage._recorder import MemoryRecorder, TrialRecord, TrialRecorder
from tuner.storage._rename import rename_study
from tuner.storage._store import (
    DATABASE_ERRORS,
    GRACE_PERIOD,
    TunerStorage,
    close_connections,
    display_url,
)
from tuner.storage._tables import epoch_metrics, epochs, trial_info

__all__ = ["DATABASE_ERRORS", "DB_INT_MAX", "DEFAULT_STORAGE", "GRACE_PERIOD", "MemoryRecorder",
           "StudyStorage", "TrialRecord", "TrialRecorder", "TunerRDBStorage", "TunerStorage",
           "close_connections", "copy_study", "database_lock", "display_url", "epoch_metrics",
           "epochs", "insert_trials", "next_trial_id", "rename_study", "trial_info"]
