"""Trials that run again: a dead worker's, and one the user interrupted.

A RUNNING trial whose heartbeat went stale (its worker was killed, its machine lost) is
failed by the next worker and queued again (:class:`RetryStale`, the storage's
stale-trial callback); a trial stopped by Ctrl-C or SIGTERM is failed and queued again
at once (:func:`requeue`). Either way the retry is a WAITING trial with the same
parameters and user attributes, which the next claim takes before sampling anything
new, and whose system attributes name the chain's first trial (``failed_trial``, as
Optuna's :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` writes it): its
seed and its checkpoint are that trial's, so the retry resumes where it stopped.

Interruptions do not count against the stale retries' limit: stopping a study with
Ctrl-C several times must not use up the retries a crash would need.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

# The numbers of a chain's trials that were interrupted (a system attribute of retries).
INTERRUPTED_ATTR = "tuner:interrupted"
MAX_STALE_RETRIES = 3


def requeue(study: optuna.Study, trial: FrozenTrial, *, interrupted: bool) -> None:
    """Queue a WAITING copy of the failed ``trial`` (its parameters, distributions and
    user attributes), recorded as a retry of its chain."""
    attrs: dict[str, Any] = {"failed_trial": trial.number, "retry_history": [],
                             **trial.system_attrs}
    attrs["retry_history"] = [*attrs["retry_history"], trial.number]
    if interrupted:
        attrs[INTERRUPTED_ATTR] = [*attrs.get(INTERRUPTED_ATTR, []), trial.number]
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs=trial.user_attrs, system_attrs=attrs))


class RetryStale:
    """The storage's stale-trial callback: queue a retry of a dead worker's trial,
    unless its chain has already been retried ``max_retry`` times after going stale."""

    def __init__(self, max_retry: int = MAX_STALE_RETRIES) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        history = trial.system_attrs.get("retry_history", [])
        stale = len(history) - len(trial.system_attrs.get(INTERRUPTED_ATTR, []))
        if stale < self.max_retry:
            requeue(study, trial, interrupted=False)
