"""How much Optuna says while the tuner runs: its per-trial INFO lines would bury the
progress display, so only its warnings show."""

from __future__ import annotations

import logging
import warnings


def quiet_optuna() -> None:
    """Optuna's per-trial INFO lines would bury the progress bar; warnings still show,
    but not the notices that a stable-for-years feature (heartbeats) is "experimental"."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("optuna").propagate = False
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
