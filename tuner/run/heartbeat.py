"""Running trials' heartbeats, so that a dead worker's trials are found and retried.

The storage records a timestamp for each trial every ``heartbeat_interval`` seconds
from one background thread; a RUNNING trial whose heartbeat is older than the grace
period is failed by the next worker (``optuna.storages.fail_stale_trials``) and
retried (``RetryHeartbeatStaleTrialCallback``).
"""

from __future__ import annotations

import contextlib
import threading
from types import TracebackType

import optuna


class Heartbeat:
    """Context manager: beats for ``trial_ids`` while the block runs.

    A fused population's members come and go while it trains: :meth:`add` and
    :meth:`discard` change the set the thread beats for.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, *trial_ids: int) -> None:
        self.storage = storage
        self.trial_ids = set(trial_ids)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, trial_id: int) -> None:
        """Beat for ``trial_id`` too, from the next interval on (its first beat is the one
        :func:`tuner.run.runner.claim` records as it creates the trial)."""
        with self._lock:
            self.trial_ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self.trial_ids.discard(trial_id)

    def __enter__(self) -> Heartbeat:
        self._stop = threading.Event()  # the same heartbeat may be entered again
        interval = getattr(self.storage, "get_heartbeat_interval", lambda: None)()
        if interval:
            name = "heartbeat-" + ",".join(str(t) for t in sorted(self.trial_ids)[:3])
            self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True,
                                            name=name)
            self._thread.start()
        return self

    def _run(self, interval: float) -> None:
        while True:
            with self._lock:
                trial_ids = sorted(self.trial_ids)
            for trial_id in trial_ids:
                # A missed beat (a database hiccup) is retried at the next interval.
                with contextlib.suppress(Exception):
                    self.storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
            if self._stop.wait(interval):
                return

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
