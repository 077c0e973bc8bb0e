"""Python's garbage collector in a worker: no full collections while it starts.

A worker's start-up (torch, Optuna, SQLAlchemy, scikit-learn, and torch._dynamo, which
torch.optim imports at its first optimizer) makes 300,000-450,000 objects that live
as long as the process. Python's collector meanwhile runs a full collection each time
the old generation has grown by a quarter, walking every one of them: measured on
`tuner start --space quick`, seven full collections in the first seven seconds, 1.3 s
in all (the last ones 0.2-0.4 s each), before the work began.

:func:`defer_full_collections` (called first thing by the command line and by a
spawned worker) turns the full collections off; young ones still run, so the cycles
a start-up leaves behind are still freed. :func:`settle` (called once the first trial
has finished, when everything a trial imports has been imported) moves every object
that survived so far into the collector's permanent generation, which later full
collections skip, and turns them back on. Library code that never called the first
finds the second a no-op. Both are for processes that run studies; the command line
calls them in `tuner start` and `tuner worker`.
"""

from __future__ import annotations

import gc

# A number of young collections that never comes: gen 2 waits for settle().
_NEVER = 1 << 30

_deferred: tuple[int, int, int] | None = None  # the thresholds before deferring


def defer_full_collections() -> None:
    """Run no full garbage collection until :func:`settle` (young collections go on)."""
    global _deferred
    if _deferred is not None:
        return
    _deferred = gc.get_threshold()
    gc.set_threshold(_deferred[0], _deferred[1], _NEVER)


def settle() -> None:
    """Freeze what the start-up made out of later collections and collect in full again
    (a no-op unless :func:`defer_full_collections` was called)."""
    global _deferred
    if _deferred is None:
        return
    gc.freeze()
    gc.set_threshold(*_deferred)
    _deferred = None


def restore() -> None:
    """The collector as Python runs it: its thresholds back, the frozen objects back in
    the generations it walks (for a process that runs the command line in-process
    again and again, such as a test suite)."""
    global _deferred
    if _deferred is not None:
        gc.set_threshold(*_deferred)
        _deferred = None
    gc.unfreeze()


def deferred() -> bool:
    """Whether full collections wait for :func:`settle`."""
    return _deferred is not None
