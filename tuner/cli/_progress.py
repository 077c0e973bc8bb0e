"""Progress where no terminal shows a bar (a log file, a pipe, CI, a notebook's ``!``):
one plain line per finished trial.

A rich progress bar redraws itself in place; written to a file it is drawn once, at the
end, so a long run printed its header and then nothing until the summary. Here each
finished trial prints a line that reads well in a log, at most one a second (the newest
trial's, when trials finish faster), and the last one always.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console

from tuner.cli._display import RunProgress

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from tuner.run.runner import Snapshot

INTERVAL = 1.0  # seconds: the most lines a second that fast trials print
ERROR_CHARS = 120  # of a failed trial's message, on its line


def run_display(console: Console, quiet: bool) -> RunProgress | PlainProgress:
    """What a run shows on ``console``: the progress bar on a terminal, plain lines
    elsewhere, nothing with ``quiet``."""
    if quiet or console.is_terminal:
        return RunProgress(console, quiet)
    return PlainProgress(console)


class PlainProgress:
    """Plain lines fed by the runner's snapshots, as :class:`RunProgress` is fed.

    A snapshot that names its trial (``last``: one worker in this process) prints that
    trial's number, state and value; one that does not (the parent of ``--workers N``,
    which polls the database) prints the counts whenever they change. Either way a line
    ends with the best value so far and the study's progress, and starts with the time
    since the run began. A snapshot due less than ``interval`` seconds after the last
    line waits for the next one, or for the end of the run.
    """

    def __init__(self, console: Console, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self.interval = interval
        self.clock = clock
        self.started: float | None = None
        self.printed_at: float | None = None
        self.pending: Snapshot | None = None
        self.counts: tuple[int, int] | None = None  # (finished, failed) last seen

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.pending is not None:
            self._print(self.pending)

    def start(self, s: Snapshot) -> None:
        self.started = self.clock()
        self.counts = (s.finished, s.failed)
        if s.finished or s.failed:  # a resumed study: where it stands
            self._echo(f"so far: {_standing(s)}")

    def update(self, s: Snapshot) -> None:
        counts = (s.finished, s.failed)
        news = s.last is not None or counts != self.counts
        self.counts = counts
        if news:
            self.pending = s
        if self.pending is None:
            return
        if self.printed_at is None or self.clock() - self.printed_at >= self.interval:
            self._print(self.pending)

    def _print(self, s: Snapshot) -> None:
        self.pending = None
        self.printed_at = self.clock()
        head = "" if s.last is None else f"{_trial(s.last)} · "
        self._echo(head + _standing(s))

    def _echo(self, text: str) -> None:
        started = self.clock() if self.started is None else self.started
        self.console.print(f"[{_clock(self.clock() - started)}] {text}", markup=False,
                           highlight=False, emoji=False, soft_wrap=True)


def _trial(t: FrozenTrial) -> str:
    """``trial 12 complete, value 0.9611``; ``trial 3 pruned at epoch 4``; ``trial 5
    failed: <its error>``."""
    state = t.state.name.lower()
    if t.value is not None:
        return f"trial {t.number} {state}, value {t.value:.4g}"
    if state == "pruned" and t.last_step is not None:
        return f"trial {t.number} pruned at epoch {t.last_step}"
    error = str(t.user_attrs.get("error", "")).strip().splitlines()
    if state == "fail" and error:
        text = error[0] if len(error[0]) <= ERROR_CHARS else error[0][:ERROR_CHARS - 3] + "..."
        return f"trial {t.number} failed: {text}"
    return f"trial {t.number} {'failed' if state == 'fail' else state}"


def _standing(s: Snapshot) -> str:
    """``best 0.9722 · 13/200 finished (3 pruned, 1 failed)``."""
    best = "-" if s.best_value is None else f"{s.best_value:.4g}"
    more = [f"{s.pruned} pruned"] if s.pruned else []
    more += [f"{s.failed} failed"] if s.failed else []
    extra = f" ({', '.join(more)})" if more else ""
    return f"best {best} · {s.finished}/{s.budget} finished{extra}"


def _clock(seconds: float) -> str:
    """``0:03:12``, as the progress bar shows elapsed time."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
