"""Running a study to its budget: the loop every worker runs.

The budget is the study's total of finished (complete + pruned) trials, wherever they
ran. A worker claims a slot under the study's lock (:mod:`tuner.run.claims`) only while
``finished + running + waiting < budget``, so any number of workers end with exactly the
budget. Failed trials do not count, so a resumed study makes up for them. A WAITING
trial (a retry, or one enqueued by hand) is claimed before anything new is sampled, and
a study is not over while one waits. Trials left RUNNING by a dead worker are failed
once their heartbeat goes stale, and retried; trials stopped by Ctrl-C or SIGTERM are
failed and queued again at once (:mod:`tuner.storage.retries`).
"""

from __future__ import annotations

import contextlib
import enum
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import StorageError, TunerError
from tuner.run import heap
from tuner.run.claims import budget_lock
from tuner.run.heartbeat import Heartbeat
from tuner.run.objective import Objective
from tuner.run.study import count_states, finished, open_study
from tuner.space import EngineSpec, Space
from tuner.space.sampling import grid_size
from tuner.storage import DATABASE_ERRORS, GRACE_PERIOD, TunerStorage, display_url
from tuner.storage.optuna_compat import read_trial, storage_of, study_id_of, trial_id_of
from tuner.storage.retries import requeue

if TYPE_CHECKING:
    from tuner.run.userloop import UserObjective

MAX_CONSECUTIVE_FAILURES = 5
WAIT_POLL = 1.0  # seconds between looks while the rest of the budget runs elsewhere
MAX_WAIT = 3 * GRACE_PERIOD + 60  # then leave the running trials to their workers


class Claim(enum.Enum):
    """What a claim returns instead of a trial."""

    FULL = "enough trials have finished"
    WAIT = "the rest of the budget is running elsewhere"


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
    stop_reason: str  # "budget", "timeout", "max_trials" or "already_done"
    ran: int = 0  # trials this call ran to the end (complete, pruned or failed)
    last_error: str | None = None  # the message of the study's last failed trial


def run_study(space: Space, *, storage: TunerStorage, study_name: str, budget: int,
              device: torch.device, timeout: float | None = None,
              max_trials: int | None = None, checkpoint_every: float = 30.0,
              on_progress: Callable[[Snapshot], None] | None = None,
              on_start: Callable[[Snapshot], None] | None = None,
              engine: EngineSpec | None = None) -> RunSummary:
    """Run (or resume, or join) ``study_name`` until it has ``budget`` finished trials.

    ``max_trials`` caps how many trials this call runs; a grid search's budget is
    capped at the size of its grid. ``engine`` (default: the space's) trains trials one
    at a time, or a population at once (:mod:`tuner.run.population`).
    """
    engine = engine or space.engine
    if space.sampler.name == "grid":
        budget = min(budget, grid_size(space))
    study = open_study(storage, space, study_name)
    objective = make_objective(space, storage, device, checkpoint_every, engine)
    before = finished(count_states(storage, study))
    start = time.monotonic()
    failures = ran = 0
    waiting_since: float | None = None
    backoff = Backoff(storage)
    reason = "already_done"

    if on_start is not None:
        on_start(snapshot(storage, study, budget))
    if engine.name == "fused":
        from tuner.run.population import PopulationRun, check_fusable

        check_fusable(space)
        assert isinstance(objective, Objective)  # a training function of yours is refused

        def progress(frozen: FrozenTrial) -> None:
            heap.settle()  # the first trial is done: so is the start-up (tuner.run.heap)
            if on_progress is not None:
                on_progress(snapshot(storage, study, budget, frozen))

        fused = PopulationRun(study, storage, objective, budget, engine.population,
                              deadline=None if timeout is None else start + timeout,
                              max_trials=max_trials, on_progress=progress)
        reason = fused.run()
        return summarize(storage, study, budget, before, time.monotonic() - start, reason,
                         fused.ran)
    while True:
        if timeout is not None and time.monotonic() - start >= timeout:
            reason = "timeout"
            break
        if max_trials is not None and ran >= max_trials:
            reason = "max_trials"
            break
        if failures >= MAX_CONSECUTIVE_FAILURES:
            raise TunerError(f"{failures} trials in a row failed; the last error: "
                             f"{last_error(study)}")
        try:
            claimed = claim(study, storage, budget)
        except DATABASE_ERRORS as exc:
            backoff.failed(exc)
            continue
        if claimed is Claim.FULL:
            reason = "budget" if ran else "already_done"
            break
        if claimed is Claim.WAIT:
            # The budget is held by trials running elsewhere: wait until they finish, or
            # until their worker is found dead and a retry is queued for us to take.
            waiting_since = waiting_since or time.monotonic()
            if time.monotonic() - waiting_since > MAX_WAIT:
                reason = "budget"
                break
            time.sleep(WAIT_POLL)
            continue
        waiting_since = None
        try:
            frozen = run_trial(study, claimed[0], objective)
        except DATABASE_ERRORS as exc:
            # The trial could not be recorded; its heartbeat has stopped, so once the
            # database is back it is failed as stale and retried like a dead worker's.
            backoff.failed(exc)
            continue
        backoff.reset()
        heap.settle()  # the first trial is done: so is the start-up (tuner.run.heap)
        ran += 1
        failures = failures + 1 if frozen.state == TrialState.FAIL else 0
        if on_progress is not None:
            on_progress(snapshot(storage, study, budget, frozen))

    return summarize(storage, study, budget, before, time.monotonic() - start, reason, ran)


def make_objective(space: Space, storage: TunerStorage, device: torch.device,
                   checkpoint_every: float, engine: EngineSpec) -> Objective | UserObjective:
    """The tuner's objective, or one around the training function of yours the space
    names (``task.objective``)."""
    if space.task.objective:
        from tuner.run.userloop import UserObjective

        return UserObjective(space, storage, device, checkpoint_every)
    return Objective(space, storage, device, checkpoint_every, precision=engine.precision,
                     compile=engine.compile)


def summarize(storage: TunerStorage, study: optuna.Study, budget: int, before: int,
              elapsed: float, reason: str, ran: int) -> RunSummary:
    counts = count_states(storage, study)
    best = _best_trial(study)
    failed = counts[TrialState.FAIL]
    return RunSummary(study.study_name, budget, before, finished(counts),
                      counts[TrialState.PRUNED], failed, elapsed, best,
                      *_best_epoch_and_test(storage, best), reason, ran,
                      _recorded_error(study) if failed else None)


class Backoff:
    """Retry after a database error with exponential backoff, then give up with one line."""

    def __init__(self, storage: TunerStorage, tries: int = 6, first: float = 1.0) -> None:
        self.storage = storage
        self.tries = tries
        self.first = first
        self.count = 0

    def failed(self, exc: BaseException) -> None:
        self.count += 1
        if self.count >= self.tries:
            waited = self.first * (2 ** (self.tries - 1) - 1)
            raise StorageError(
                f"lost the study database {display_url(self.storage.url)} and could not get it "
                f"back in {self.tries} tries over {waited:.0f} s: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
            ) from None
        time.sleep(self.first * 2 ** (self.count - 1))

    def reset(self) -> None:
        self.count = 0


def snapshot(storage: TunerStorage, study: optuna.Study, budget: int,
             last: FrozenTrial | None = None) -> Snapshot:
    c = count_states(storage, study)
    return Snapshot(finished(c), budget, c[TrialState.PRUNED], c[TrialState.FAIL],
                    _best_value(study), last)


def claim(study: optuna.Study, storage: TunerStorage, budget: int,
          n: int = 1) -> list[optuna.Trial] | Claim:
    """Up to ``n`` new RUNNING trials, as many as the budget has room for, atomically
    across workers; else FULL (enough trials finished) or WAIT (the rest of the budget
    is running elsewhere).

    Each trial's first heartbeat is recorded as it is created: a RUNNING trial that has
    never beaten is never taken for stale, so one lost before its worker's heartbeat
    thread starts (a crash, Ctrl-C, a bug) would hold a slot of the budget forever.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Optuna warns that heartbeats are meant for Study.optimize; this loop beats itself.
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        with budget_lock(storage, study_id_of(study)):
            # A dead worker's trial is failed here, and queued again (WAITING) for a retry:
            # under the lock, so that no claim sees the slot free before the retry is queued.
            optuna.storages.fail_stale_trials(study)
            counts = count_states(storage, study)
            waiting = counts[TrialState.WAITING]  # retries and enqueued trials: taken first
            if finished(counts) >= budget and not waiting:
                return Claim.FULL
            room = max(0, budget - finished(counts) - counts[TrialState.RUNNING] - waiting)
            if room + waiting <= 0:
                return Claim.WAIT
            trials: list[optuna.Trial] = []
            try:
                for _ in range(min(n, room + waiting)):
                    trials.append(study.ask())  # a WAITING trial first
                    if storage.optuna.get_heartbeat_interval():
                        storage.optuna.record_heartbeat(trial_id_of(trials[-1]))
            except BaseException:
                fail_untold(study, trials)
                raise
            return trials


def fail_untold(study: optuna.Study, trials: Sequence[optuna.Trial]) -> None:
    """Tell trials that will not run on FAIL, whatever arrives meanwhile; a trial already
    finished elsewhere is left as it is. Called while an exception is handled: if it is an
    interruption (Ctrl-C, SIGTERM), each trial that had its parameters is queued again at
    once (:func:`tuner.storage.retries.requeue`), to resume from its checkpoint."""
    interrupted = isinstance(sys.exc_info()[1], KeyboardInterrupt | SystemExit)
    with signals_ignored():
        for trial in trials:
            with contextlib.suppress(*DATABASE_ERRORS):
                frozen = read_trial(study, trial_id_of(trial))
                if frozen.state.is_finished():
                    continue
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                if interrupted and frozen.params:
                    requeue(study, frozen, interrupted=True)


def run_trial(study: optuna.Study, trial: optuna.Trial,
              objective: Callable[[optuna.Trial], float]) -> FrozenTrial:
    """Run the objective with a heartbeat and tell the outcome; Ctrl-C fails the trial."""
    with Heartbeat(storage_of(study), trial_id_of(trial)):
        return tell_outcome(study, trial, lambda: objective(trial))


def tell_outcome(study: optuna.Study, trial: optuna.Trial,
                 run: Callable[[], float]) -> FrozenTrial:
    """Tell ``trial`` what ``run()`` gave: its value (COMPLETE), ``TrialPruned`` (PRUNED)
    or a ``RuntimeError`` (FAIL; the study goes on). On Ctrl-C or SIGTERM the trial is
    told FAIL and queued again (the next run resumes it), on any other error told FAIL;
    the error is raised.

    A trial that another worker took for dead (its heartbeat stalled) and failed, which
    queued a retry, is left failed: its result is dropped.
    """
    state, value = TrialState.FAIL, None
    try:
        value = run()
        state = TrialState.COMPLETE
    except optuna.TrialPruned:
        state = TrialState.PRUNED
    except optuna.exceptions.UpdateFinishedTrialError:  # (a RuntimeError) failed elsewhere
        return read_trial(study, trial_id_of(trial))
    except RuntimeError:  # recorded on the trial; the study goes on
        state = TrialState.FAIL
    except BaseException:
        fail_untold(study, [trial])
        raise
    return study.tell(trial, value if state == TrialState.COMPLETE else None, state=state,
                      skip_if_finished=True)


def ignore_signal(signum: int, frame: FrameType | None) -> None:
    """A handler that does nothing. Not SIG_IGN: a signal that arrived just before the
    switch would then be reported as an OSError ("ignored due to race condition")."""


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, ignore_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
    return storage.best_epoch_and_test_metric(trial_id_of(trial))


def last_error(study: optuna.Study) -> str:
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    return failed[-1].user_attrs.get("error", "see the log above") if failed else "unknown"


def _recorded_error(study: optuna.Study) -> str | None:
    """The message of the last failed trial that recorded one (trial #N: ...), if any."""
    for trial in reversed(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))):
        if "error" in trial.user_attrs:
            return f"trial #{trial.number}: {trial.user_attrs['error']}"
    return None
