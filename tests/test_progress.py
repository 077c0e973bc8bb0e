"""Progress where no terminal shows a bar: one plain line per finished trial, at most one
a second, the last one always; checked on snapshots with a fake clock, then end to end
through `tuner start` with its output going to pipes, against the study in the database."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from tuner.cli._display import RunProgress
from tuner.cli._progress import PlainProgress, run_display
from tuner.run.runner import Snapshot


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _console(width: int = 80) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=width, force_terminal=False), out


def _trial(number: int, state: TrialState = TrialState.COMPLETE, value: float | None = None,
           **kwargs: object) -> FrozenTrial:
    trial = optuna.trial.create_trial(state=state, value=value, **kwargs)  # type: ignore[arg-type]
    trial.number = number
    return trial


def _snap(finished: int, last: FrozenTrial | None = None, best: float | None = None,
          pruned: int = 0, failed: int = 0, budget: int = 10) -> Snapshot:
    return Snapshot(finished, budget, pruned, failed, best, last)


def _lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_a_line_per_trial_names_number_state_value_best_and_elapsed() -> None:
    console, out = _console()
    clock = Clock()
    with PlainProgress(console, clock=clock) as progress:
        progress.start(_snap(0))
        clock.now += 2.5
        progress.update(_snap(1, _trial(0, value=0.5), best=0.5))
        clock.now += 61
        progress.update(_snap(2, _trial(1, TrialState.PRUNED, intermediate_values={1: 0.1,
                                                                                    3: 0.2}),
                              best=0.5, pruned=1))
        clock.now += 3600
        progress.update(_snap(2, _trial(2, TrialState.FAIL, user_attrs={"error": "boom\nmore"}),
                              best=0.5, pruned=1, failed=1))
    assert _lines(out) == [
        "[0:00:02] trial 0 complete, value 0.5 · best 0.5 · 1/10 finished",
        "[0:01:03] trial 1 pruned at epoch 3 · best 0.5 · 2/10 finished (1 pruned)",
        "[1:01:03] trial 2 failed: boom · best 0.5 · 2/10 finished (1 pruned, 1 failed)",
    ]


def test_fast_trials_print_at_most_a_line_a_second_and_always_the_last() -> None:
    console, out = _console()
    clock = Clock()
    with PlainProgress(console, interval=1.0, clock=clock) as progress:
        progress.start(_snap(0))
        for n in range(10):  # a trial every 0.3 s
            clock.now += 0.3
            progress.update(_snap(n + 1, _trial(n, value=n / 10), best=n / 10))
    numbers = [int(m.group(1)) for m in map(re.compile(r"\] trial (\d+) ").search, _lines(out))
               if m]
    # Trial 0 at once, then the newest trial once a second has passed, then the last one.
    assert numbers == [0, 4, 8, 9]
    assert _lines(out)[-1].endswith("10/10 finished")


def test_the_last_line_is_not_printed_twice() -> None:
    console, out = _console()
    clock = Clock()
    with PlainProgress(console, clock=clock) as progress:
        progress.start(_snap(0))
        clock.now += 5
        progress.update(_snap(1, _trial(0, value=1.0), best=1.0, budget=1))
    assert len(_lines(out)) == 1


def test_polled_snapshots_print_when_the_counts_change() -> None:
    """`--workers N`: the parent polls the database; a line when something finished,
    and a held one goes out at the next poll once a second has passed."""
    console, out = _console()
    clock = Clock()
    with PlainProgress(console, clock=clock) as progress:
        progress.start(_snap(3, best=0.9))
        for _ in range(4):  # nothing new
            clock.now += 0.5
            progress.update(_snap(3, best=0.9))
        progress.update(_snap(4, best=0.95))
        clock.now += 0.5
        progress.update(_snap(5, best=0.95))  # held: half a second after the last line
        clock.now += 0.5
        progress.update(_snap(5, best=0.95))  # the poll after the second: out it goes
        clock.now += 0.5
        progress.update(_snap(5, best=0.95))
    assert _lines(out) == [
        "[0:00:00] so far: best 0.9 · 3/10 finished",
        "[0:00:02] best 0.95 · 4/10 finished",
        "[0:00:03] best 0.95 · 5/10 finished",
    ]


def test_long_lines_are_not_wrapped() -> None:
    console, out = _console(width=30)
    clock = Clock()
    with PlainProgress(console, clock=clock) as progress:
        progress.start(_snap(0))
        progress.update(_snap(1, _trial(0, TrialState.FAIL, user_attrs={"error": "x" * 300}),
                              failed=1))
    (line,) = _lines(out)
    assert line.startswith("[0:00:00] trial 0 failed: xxx")
    assert "x" * 117 + "..." in line  # the error cut at 120 characters


def test_the_bar_on_a_terminal_lines_elsewhere_nothing_when_quiet() -> None:
    terminal = Console(file=io.StringIO(), force_terminal=True)
    pipe, _ = _console()
    assert isinstance(run_display(terminal, quiet=False), RunProgress)
    assert isinstance(run_display(pipe, quiet=False), PlainProgress)
    quiet = run_display(pipe, quiet=True)
    assert isinstance(quiet, RunProgress) and quiet.bar is None


# --- end to end: `tuner start` writing to pipes ---------------------------------------------


def _start(tiny_path: Path, storage_url: str, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TUNER_STORAGE", "TUNER_DEVICE")}
    return subprocess.Popen([sys.executable, "-m", "tuner", "start", "--space", str(tiny_path),
                             "--storage", storage_url, "--device", "cpu", "--trials", "5",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


LINE = re.compile(r"^\[\d+:\d\d:\d\d\] trial (\d+) (complete|pruned|failed)(?:, value (\S+))?"
                  r".* · best (\S+) · (\d+)/5 finished")


@pytest.mark.slow
def test_start_into_a_pipe_prints_trials_as_they_finish(tiny_path: Path,
                                                       storage_url: str) -> None:
    proc = _start(tiny_path, storage_url)
    assert proc.stderr is not None
    lines, running = [], []
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
        if LINE.match(line):
            running.append(proc.poll() is None)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, "\n".join(lines)
    trials = [m for m in map(LINE.match, lines) if m]
    assert trials, lines
    assert running[0], "the first trial's line came only once the run was over"
    assert lines[0].startswith("Study tiny · ")  # the header, then the trials' lines
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    by_number = {t.number: t for t in study.trials}
    for match in trials:
        number, state, value, best, done = match.groups()
        trial = by_number[int(number)]
        assert state == {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}[
            trial.state.name]
        if value is not None:
            assert value == f"{trial.value:.4g}"
        before = [t.value for t in study.trials if t.number <= trial.number
                  and t.state == TrialState.COMPLETE and t.value is not None]
        assert best == f"{max(before):.4g}"
        assert int(done) == sum(t.state.is_finished() and t.state != TrialState.FAIL
                                for t in study.trials if t.number <= trial.number)
    assert trials[-1].group(5) == "5"  # the last trial's line, always
    assert len(trials) <= 2 + len(study.trials)
    assert "Study 'tiny': ran 5 trials" in out


@pytest.mark.slow
def test_quiet_into_a_pipe_prints_only_the_summary(tiny_path: Path, storage_url: str) -> None:
    proc = _start(tiny_path, storage_url, "--quiet")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert err == ""
    assert out.startswith("Study 'tiny': ran 5 trials")

