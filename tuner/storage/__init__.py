"""The study database: Optuna's schema plus the tuner's own tables, one engine."""

from tuner.storage._recorder import MemoryRecorder, TrialRecord, TrialRecorder
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
           "TrialRecord", "TrialRecorder", "TunerStorage", "display_url", "epoch_metrics",
           "epochs", "trial_info"]
