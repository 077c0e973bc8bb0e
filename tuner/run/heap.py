"""Python's garbage collector in a worker: no full collections while it starts.

A worker's start-up (torch, Optuna, SQLAlchemy, scikit-learn, and torch._dynamo, which
torch.optim imports at its first optimizer) makes hundreds of thousands of objects
that live as long as the process. Python's collector meanwhile runs a full collection
each time the old generation has grown by a quarter, walking every one of them: several
full collections, each longer than the last, before the work began.

:func:`defer_full_collections` (called by `tuner start`, `tuner worker` and
:mod:`tuner.run.spawn` before they import the heavy modules) turns the full collections
off; young ones still run, so cycles that die young are still freed. :func:`settle`
(called once the first trial has finished, when what a trial imports has been imported)
turns them back on: the collector then runs one full collection when it next sees fit,
instead of several. Nothing is frozen out of collections (``gc.freeze``) while the work
goes on: that would keep forever any cycle that was alive or not yet collected at that
moment, such as a failed trial's traceback holding its model. Library code that never
defers finds :func:`settle` a no-op.

At the process's exit there is nothing left to keep: :func:`freeze_at_exit` (the ``tuner``
command and its worker processes) freezes every object once the exit handlers have run,
so that the interpreter's final collections do not walk the start-up's objects again.

Python 3.14's collector is incremental, with no full collections to defer: there
:func:`defer_full_collections` does nothing.
"""

from __future__ import annotations

import atexit
import gc
import sys

# A count of generation-1 collections that never comes: generation 2 waits for settle().
_NEVER = 1 << 30

INCREMENTAL = sys.version_info >= (3, 14)

_deferred: tuple[int, int, int] | None = None  # the thresholds before deferring


def defer_full_collections() -> None:
    """Run no full garbage collection until :func:`settle` (young collections go on)."""
    global _deferred
    if _deferred is not None or INCREMENTAL:
        return
    _deferred = gc.get_threshold()
    gc.set_threshold(_deferred[0], _deferred[1], _NEVER)


def settle() -> None:
    """Collect in full again, as Python does (a no-op unless deferred)."""
    global _deferred
    if _deferred is None:
        return
    gc.set_threshold(*_deferred)
    _deferred = None


def deferred() -> bool:
    """Whether full collections wait for :func:`settle`."""
    return _deferred is not None


def freeze_at_exit() -> None:
    """When the process exits, move every object out of the collector's reach before the
    interpreter's final collections, which would otherwise walk them all for nothing
    (cyclic garbage left then is not finalized; the memory goes back with the process).
    Called first, the handler runs after every exit handler registered later."""
    atexit.register(gc.freeze)
