"""The study database: Optuna's schema plus the tuner's own tables, one engine."""

from tuner.storage._copy import copy_study
from tuner.storage._fast import StudyStorage, TunerRDBStorage
from tuner.storage._lock import database_lock
from tuner.storage._recorder import MemoryRecorder, TrialRecord, TrialRecorder
from tuner.storage._rename import rename_study
from tuner.storage._store import (
    DATABASE_ERRORS,
    DB_INT_MAX,
    DEFAULT_STORAGE,
    GRACE_PERIOD,
    TunerStorage,
    display_url,
)
from tuner.storage._tables import epoch_metrics, epochs, trial_info

__all__ = ["DATABASE_ERRORS", "DB_INT_MAX", "DEFAULT_STORAGE", "GRACE_PERIOD", "MemoryRecorder",
           "StudyStorage", "TrialRecord", "TrialRecorder", "TunerRDBStorage", "TunerStorage",
           "copy_study", "database_lock", "display_url", "epoch_metrics", "epochs",
           "rename_study", "trial_info"]
