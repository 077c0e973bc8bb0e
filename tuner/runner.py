"""Running a study to its budget: the loop a worker runs.

The budget is the study's total of finished (complete + pruned) trials, wherever they
ran; trials still running elsewhere hold their slot. Failed trials do not count, so a
resumed study makes up for them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import TunerError
from tuner.objective import Objective
from tuner.samplers import grid_size
from tuner.space import Space
from tuner.storage import TunerStorage, trial_info
from tuner.study import count_states, finished, open_study

MAX_CONSECUTIVE_FAILURES = 5


@dataclass
class Snapshot:
    """Where a run stands, for progress displays."""

    finished: int
    budget: int
    pruned: int
    failed: int
    best_value: float | None
    last: FrozenTrial | None = None


@dataclass
class RunSummary:
    study_name: str
    budget: int
    finished_before: int
    finished: int
    pruned: int
    failed: int
    elapsed: float
    best: FrozenTrial | None
    best_epoch: int | None
    test_metric: float | None
    stop_reason: str  # "budget", "timeout" or "already_done"

    @property
    def ran(self) -> int:
        return self.finished - self.finished_before


def run_study(space: Space, *, storage: TunerStorage, study_name: str, budget: int,
              device: torch.device, timeout: float | None = None,
              on_progress: Callable[[Snapshot], None] | None = None,
              on_start: Callable[[Snapshot], None] | None = None) -> RunSummary:
    """Run (or resume) ``study_name`` until it has ``budget`` finished trials.

    A grid search's budget is capped at the size of its grid.
    """
    if space.sampler.name == "grid":
        budget = min(budget, grid_size(space))
    study = open_study(storage, space, study_name)
    objective = Objective(space, storage, device)
    counts = count_states(storage, study)
    before = finished(counts)
    start = time.monotonic()
    failures = 0
    reason = "already_done"

    def snapshot(last: FrozenTrial | None = None) -> Snapshot:
        c = count_states(storage, study)
        return Snapshot(finished(c), budget, c[TrialState.PRUNED], c[TrialState.FAIL],
                        _best_value(study), last)

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal failures
        failures = failures + 1 if trial.state == TrialState.FAIL else 0
        if on_progress is not None:
            on_progress(snapshot(trial))

    if on_start is not None:
        on_start(snapshot())
    while True:
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial is failed and retried
        counts = count_states(storage, study)
        if finished(counts) + counts[TrialState.RUNNING] >= budget:
            reason = "budget" if finished(counts) > before else "already_done"
            break
        if timeout is not None and time.monotonic() - start >= timeout:
            reason = "timeout"
            break
        if failures >= MAX_CONSECUTIVE_FAILURES:
            raise TunerError(f"{failures} trials in a row failed; the last error: "
                             f"{_last_error(study)}")
        study.optimize(objective, n_trials=1, catch=(RuntimeError,), callbacks=[after_trial])

    counts = count_states(storage, study)
    best = _best_trial(study)
    return RunSummary(study_name, budget, before, finished(counts), counts[TrialState.PRUNED],
                      counts[TrialState.FAIL], time.monotonic() - start, best,
                      *_best_epoch_and_test(storage, best), reason)


def _best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None


def _best_value(study: optuna.Study) -> float | None:
    best = _best_trial(study)
    return None if best is None else best.value


def _best_epoch_and_test(storage: TunerStorage,
                         trial: FrozenTrial | None) -> tuple[int | None, float | None]:
    if trial is None:
        return None, None
    with storage.session() as conn:
        row = conn.execute(trial_info.select()
                           .with_only_columns(trial_info.c.best_epoch, trial_info.c.test_metric)
                           .where(trial_info.c.trial_id == trial._trial_id)).first()
    return (None, None) if row is None else (row[0], row[1])


def _last_error(study: optuna.Study) -> str:
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    return failed[-1].user_attrs.get("error", "see the log above") if failed else "unknown"
