"""``tuner dashboard``: optuna-dashboard over the study database, read-only unless told
otherwise (:mod:`~tuner.dashboard.server`)."""
