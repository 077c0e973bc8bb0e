"""What commands show a person: a progress bar while a study runs, a summary at the end,
and the read-back commands' tables, fitted to the terminal.

A table shows the parameters that differ between its rows; those the same in every row
are named once, below it. One trial is shown as the end-of-run summary shows the best:
a headline, then one line per parameter.
"""

from __future__ import annotations

import math
import os
import sys
import textwrap
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from tuner.formatting import format_rows, plural

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID

    from tuner.run.runner import RunSummary, Snapshot


# The width of tables written to something that is not a terminal (a file, a pipe), unless
# COLUMNS says otherwise.
DEFAULT_WIDTH = 120
MIN_WIDTH = 40
# Columns a table keeps even when every row has them empty.
ALWAYS = ("number", "state", "value")


class RunProgress:
    """A rich progress bar fed by the runner's snapshots (silent when quiet)."""

    def __init__(self, console: Console, quiet: bool) -> None:
        # rich is imported here: the read-back commands' tables need none of it.
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

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
        done = plural(s.finished, "finished trial")
        head = (f"Study {name!r} already has {done} (budget {s.budget}): "
                f"nothing to do. {more}.")
    else:
        why = " (timeout)" if s.stop_reason == "timeout" else ""
        head = (f"Study {name!r}: ran {plural(s.ran, 'trial')} in {_duration(s.elapsed)}{why}; "
                f"{s.finished}/{s.budget} finished ({s.pruned} pruned, {s.failed} failed).")
    lines = [head]
    if s.failed and s.last_error and s.stop_reason != "already_done":
        lines.append(f"Last failure: {s.last_error}")
    if s.best is not None:
        notes = [] if s.best_epoch is None else [f"epoch {s.best_epoch}"]
        lines += trial_lines(f"Best trial #{s.best.number}", s.best.value, metric,
                             s.best.params, test_metric=s.test_metric, notes=notes)
    lines.append(f"More: tuner trials --study {name}  ·  tuner best --study {name}")
    return "\n".join(lines)


def trial_lines(title: str, value: float | None, metric: str | None,
                params: Mapping[str, Any], *, test_metric: float | None = None,
                notes: Sequence[str] = ()) -> list[str]:
    """One trial, vertically: ``title: validation METRIC value, test METRIC value
    (notes)``, then one aligned line per parameter. ``metric`` None: a study the tuner
    did not create, whose value is just that.

    >>> print("\\n".join(trial_lines("Best trial #3", 0.98, "accuracy", {"lr": 0.01},
    ...                              notes=["epoch 7"])))
    Best trial #3: validation accuracy 0.9800 (epoch 7)
      lr  0.01
    """
    what = "value" if metric is None else f"validation {metric}"
    head = f"{title}: no value" if value is None else f"{title}: {what} {_metric(value)}"
    if test_metric is not None:
        head += f", test {metric or 'value'} {_metric(test_metric)}"
    if notes:
        head += f" ({', '.join(notes)})"
    width = max((len(k) for k in params), default=0)
    return [head, *(f"  {k.ljust(width)}  {_value(v)}" for k, v in params.items())]


def _metric(v: float) -> str:
    # Four decimals read well for accuracies and losses; a small error keeps its digits.
    return f"{v:.4g}" if math.isfinite(v) and 0 < abs(v) < 1e-2 else f"{v:.4f}"


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{seconds:.1f}s"


# -- the read-back commands' tables --------------------------------------------------------


def output_width(stream: IO[str] | None = None) -> int:
    """How wide a table may be: COLUMNS when set, else the terminal's width, else (a file,
    a pipe) :data:`DEFAULT_WIDTH`."""
    env = os.environ.get("COLUMNS", "").strip()
    if env.isdigit() and int(env) > 0:
        return max(int(env), MIN_WIDTH)
    stream = sys.stdout if stream is None else stream
    try:
        if stream.isatty():
            return max(os.get_terminal_size(stream.fileno()).columns, MIN_WIDTH)
    except (AttributeError, OSError, ValueError):  # no file descriptor, or not a terminal
        pass
    return DEFAULT_WIDTH


def split_params(rows: Sequence[Mapping[str, Any]], names: Sequence[str]
                 ) -> tuple[list[str], dict[str, Any]]:
    """The parameters that differ between ``rows`` (each row's ``params``), and the others,
    with their one value. A parameter some rows lack (a conditional one) differs; with
    fewer than two rows nothing does."""
    varying: list[str] = []
    same: dict[str, Any] = {}
    for name in names:
        values = [r["params"][name] for r in rows if name in r["params"]]
        # (type, value): True and 1 are different choices.
        if len(rows) > 1 and len(values) == len(rows) and len({(type(v), v)
                                                                for v in values}) == 1:
            same[name] = values[0]
        else:
            varying.append(name)
    return varying, same


def same_line(same: Mapping[str, Any], n_rows: int, width: int) -> str:
    """``Same in all N trials: a=1, b=adam``, wrapped to ``width``."""
    text = f"Same in all {n_rows} trials: " + ", ".join(f"{k}={_value(v)}"
                                                       for k, v in same.items())
    return textwrap.fill(text, width=width, subsequent_indent="  ", break_long_words=False,
                         break_on_hyphens=False)


def flat(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows with their parameters as keys of their own, beside the fields."""
    return [{**r["params"], **{k: v for k, v in r.items() if k != "params"}} for r in rows]


def trials_table(rows: Sequence[Mapping[str, Any]], fields: Sequence[str],
                 params: Sequence[str], width: int, all_params: bool = False) -> str:
    """The rows as a table that fits ``width``: ``fields`` (those empty in every row left
    out), the parameters that differ between rows (every one with ``all_params``), and a
    line naming the parameters that are the same in all."""
    shown, same = (list(params), {}) if all_params else split_params(rows, params)
    fields = [f for f in fields if f in ALWAYS or not rows
              or any(r.get(f) is not None for r in rows)]
    text = format_rows(flat(rows), [*fields, *shown], "table", width=width)
    if same:
        text += same_line(same, len(rows), width) + "\n"
    return text


def trial_text(row: Mapping[str, Any], metric: str | None, best: bool = False) -> str:
    """One trial, as :func:`trial_lines` shows it (the end-of-run summary's look)."""
    title = f"Best trial #{row['number']}" if best else f"Trial #{row['number']} ({row['state']})"
    notes = [f"epoch {row['best_epoch']}"] if row.get("best_epoch") is not None else []
    if row.get("seed") is not None:
        notes.append(f"seed {row['seed']}")
    if row.get("duration") is not None:
        notes.append(f"ran {row['duration']:.1f} s")
    return "\n".join(trial_lines(title, row.get("value"), metric, row["params"],
                                 test_metric=row.get("test_metric"), notes=notes)) + "\n"
