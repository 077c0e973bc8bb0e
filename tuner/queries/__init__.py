"""Reading the study database back with SQL, without loading every trial into Python.

The queries join Optuna's tables (``studies``, ``trials``, ``trial_values``,
``trial_params``, ``trial_intermediate_values``) with the tuner's (``tuner_trials``,
``tuner_epochs``) when they exist; filters (``--where``) are parsed by a small parser
and become SQL with bound parameters.

>>> from tuner.storage import TunerStorage
>>> studies(TunerStorage("sqlite:///:memory:").open())
[]
"""

from tuner.queries._curves import CURVE_COLUMNS, curve_columns, curves
from tuner.queries._filter import FilterError, parse
from tuner.queries._studies import STUDY_COLUMNS, studies, study_metric
from tuner.queries._trials import TRIAL_FIELDS, best_trials, param_names, trials
from tuner.queries.schema import STATES

__all__ = [
    "CURVE_COLUMNS",
    "STATES",
    "STUDY_COLUMNS",
    "TRIAL_FIELDS",
    "FilterError",
    "best_trials",
    "curve_columns",
    "curves",
    "param_names",
    "parse",
    "studies",
    "study_metric",
    "trials",
]
