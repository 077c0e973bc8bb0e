"""Timing a run, and every storage call in it: how much of the wall time the storage takes.

While a :class:`StorageClock` is active, the methods of the storage classes in play
(Optuna's RDB, cached and in-memory storages, the tuner's storage and recorder) are
wrapped with a timer; on exit the originals are put back. Only calls made by the
thread that entered the clock are counted (the heartbeat thread's writes overlap
training rather than adding to it), and a call made inside another timed call counts
once, with the outer one.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import optuna

from tuner.storage import MemoryRecorder, StudyStorage, TunerRDBStorage, TunerStorage
from tuner.storage.optuna_compat import CachedStorage

# The classes whose methods are timed. TunerStorage.session is a context manager: its
# whole block is timed (count_states and other queries run their SQL inside it).
STORAGE_CLASSES: tuple[type, ...] = (
    optuna.storages.BaseStorage, optuna.storages.RDBStorage, CachedStorage,
    optuna.storages.InMemoryStorage, TunerStorage, MemoryRecorder, TunerRDBStorage, StudyStorage)
# Opening a database (schema creation, migrations check) is part of what it costs.
TIMED_DUNDERS = ("__init__",)


class StorageClock:
    """Context manager: the block's ``wall`` time, and the ``seconds`` of it spent inside
    storage calls on this thread (in ``calls`` calls). Entered again, it adds up.

    >>> with StorageClock() as clock:
    ...     _ = optuna.create_study()  # in-memory
    >>> 0 < clock.seconds <= clock.wall
    True
    """

    def __init__(self, classes: tuple[type, ...] = STORAGE_CLASSES) -> None:
        self.classes = classes
        self.wall = 0.0
        self.seconds = 0.0
        self.calls = 0
        self._entered = 0.0
        self._thread = 0
        self._depth = 0
        self._saved: list[tuple[type, str, Any]] = []

    def __enter__(self) -> StorageClock:
        self._thread = threading.get_ident()
        for cls in self.classes:
            for name, attr in list(vars(cls).items()):
                if name == "session" and cls is TunerStorage:
                    wrapped: Any = self._timed_session(getattr(cls, name))
                elif isinstance(attr, types.FunctionType) and (
                        not name.startswith("__") or name in TIMED_DUNDERS):
                    wrapped = self._timed(attr)
                else:
                    continue
                self._saved.append((cls, name, attr))
                setattr(cls, name, wrapped)
        self._entered = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._entered
        for cls, name, attr in reversed(self._saved):
            setattr(cls, name, attr)
        self._saved.clear()

    def _start(self) -> float | None:
        """The start of an outermost call on the clock's thread; None for any other."""
        if self._depth or threading.get_ident() != self._thread:
            return None
        self._depth = 1
        return time.perf_counter()

    def _stop(self, start: float | None) -> None:
        if start is not None:
            self.seconds += time.perf_counter() - start
            self.calls += 1
            self._depth = 0

    def _timed(self, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = self._start()
            try:
                return function(*args, **kwargs)
            finally:
                self._stop(start)
        return timed

    def _timed_session(self, session: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(session)
        @contextlib.contextmanager
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            start = self._start()
            try:
                with session(*args, **kwargs) as conn:
                    yield conn
            finally:
                self._stop(start)
        return timed
