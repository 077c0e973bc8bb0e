"""Optuna's tables as the queries read them: :mod:`tuner.storage.optuna_tables`, where the
schema's definitions live with the rest of the database's."""

from tuner.storage.optuna_tables import (
    STATES,
    as_text,
    intermediate_values,
    studies,
    study_directions,
    trial_params,
    trial_values,
    trials,
)

__all__ = ["STATES", "as_text", "intermediate_values", "studies", "study_directions",
           "trial_params", "trial_values", "trials"]
