"""A running trial's heartbeat, so that a dead worker's trial is found and retried.

The storage records a timestamp for the trial every ``heartbeat_interval`` seconds
from a background thread; a RUNNING trial whose heartbeat is older than the grace
period is failed by the next worker (``optuna.storages.fail_stale_trials``) and
retried (``RetryHeartbeatStaleTrialCallback``).
"""

from __future__ import annotations

import contextlib
import threading
from types import TracebackType

import optuna


class Heartbeat:
    """Context manager: beats for ``trial_id`` while the block runs."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        interval = getattr(self.storage, "get_heartbeat_interval", lambda: None)()
        if interval:
            self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True,
                                            name=f"heartbeat-{self.trial_id}")
            self._thread.start()
        return self

    def _run(self, interval: float) -> None:
        while True:
            # A missed beat (a database hiccup) is retried at the next interval.
            with contextlib.suppress(Exception):
                self.storage.record_heartbeat(self.trial_id)  # type: ignore[attr-defined]
            if self._stop.wait(interval):
                return

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
