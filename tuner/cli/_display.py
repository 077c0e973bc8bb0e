"""What long-running commands show: a progress bar while they run, a summary at the end."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

if TYPE_CHECKING:
    from tuner.runner import RunSummary, Snapshot


class RunProgress:
    """A rich progress bar fed by the runner's snapshots (silent when quiet)."""

    def __init__(self, console: Console, quiet: bool) -> None:
        self.bar = None if quiet else Progress(
            TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=console, transient=False)
        self.task: TaskID | None = None

    def __enter__(self) -> RunProgress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def start(self, s: Snapshot) -> None:
        if self.bar is not None:
            self.task = self.bar.add_task("trials", total=s.budget, completed=s.finished,
                                          info=self._info(s))

    def update(self, s: Snapshot) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=min(s.finished, s.budget), info=self._info(s))

    @staticmethod
    def _info(s: Snapshot) -> str:
        best = "-" if s.best_value is None else f"{s.best_value:.4g}"
        failed = f" · failed {s.failed}" if s.failed else ""
        return f"pruned {s.pruned}{failed} · best {best}"


def summary_text(s: RunSummary, metric: str, worker: bool = False) -> str:
    """What a run did, for `tuner start` (or, with ``worker``, `tuner worker`, whose
    --trials caps its own trials: only `tuner start` raises a study's budget)."""
    name = s.study_name
    metric = metric.rpartition(":")[2]  # a function of yours: its name
    if s.stop_reason == "already_done":
        more = ("A worker's --trials caps its own share; `tuner start` with the study's "
                "space and a larger --trials raises the budget" if worker
                else "Raise --trials to run more")
        head = (f"Study {name!r} already has {s.finished} finished trials (budget {s.budget}): "
                f"nothing to do. {more}.")
    else:
        why = " (timeout)" if s.stop_reason == "timeout" else ""
        head = (f"Study {name!r}: ran {s.ran} trials in {_duration(s.elapsed)}{why}; "
                f"{s.finished}/{s.budget} finished ({s.pruned} pruned, {s.failed} failed).")
    lines = [head]
    if s.failed and s.last_error and s.stop_reason != "already_done":
        lines.append(f"Last failure: {s.last_error}")
    if s.best is not None:
        test = "" if s.test_metric is None else f", test {metric} {s.test_metric:.4f}"
        epoch = "" if s.best_epoch is None else f" (epoch {s.best_epoch})"
        lines.append(f"Best trial #{s.best.number}: validation {metric} {s.best.value:.4f}"
                     f"{test}{epoch}")
        width = max(len(k) for k in s.best.params) if s.best.params else 0
        lines += [f"  {k.ljust(width)}  {_value(v)}" for k, v in s.best.params.items()]
    lines.append(f"More: tuner trials --study {name}  ·  tuner best --study {name}")
    return "\n".join(lines)


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{seconds:.1f}s"
