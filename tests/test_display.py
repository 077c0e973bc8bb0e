"""tuner/cli/_display.py: the width tables fit, what differs between trials, one trial
shown as a list."""

from __future__ import annotations

import io
import os
import struct

import pytest

from tuner.cli._display import DEFAULT_WIDTH, output_width, same_line, split_params, trial_lines


def test_width_comes_from_columns_else_a_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "77")
    assert output_width(io.StringIO()) == 77
    monkeypatch.setenv("COLUMNS", "not a number")
    assert output_width(io.StringIO()) == DEFAULT_WIDTH
    monkeypatch.delenv("COLUMNS")
    assert output_width(io.StringIO()) == DEFAULT_WIDTH == 120  # a pipe, a file


def test_width_of_a_terminal_is_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    pty = pytest.importorskip("pty")
    termios = pytest.importorskip("termios")
    import fcntl

    monkeypatch.delenv("COLUMNS", raising=False)
    leader, follower = pty.openpty()
    try:
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 93, 0, 0))
        with os.fdopen(follower, "w", closefd=False) as terminal:
            assert output_width(terminal) == 93
    finally:
        os.close(leader)
        os.close(follower)


def test_split_params() -> None:
    rows = [{"params": {"lr": 0.1, "kind": "a", "bn": True, "momentum": 0.9}},
            {"params": {"lr": 0.2, "kind": "a", "bn": True}},
            {"params": {"lr": 0.3, "kind": "a", "bn": 1}}]
    varying, same = split_params(rows, ["lr", "kind", "bn", "momentum"])
    # bn: True and 1 are different choices; momentum: absent from two trials.
    assert varying == ["lr", "bn", "momentum"] and same == {"kind": "a"}
    assert split_params(rows[:1], ["lr", "kind"]) == (["lr", "kind"], {})  # one row


def test_same_line_wraps_to_the_width() -> None:
    same = {f"knob_{i}": i / 3 for i in range(12)}
    lines = same_line(same, 20, 50).split("\n")
    assert lines[0].startswith("Same in all 20 trials: knob_0=0, knob_1=0.3333")
    assert max(map(len, lines)) <= 50 and all(line.startswith("  ") for line in lines[1:])
    assert " ".join(lines).count("=") == 12


def test_trial_lines() -> None:
    lines = trial_lines("Best trial #4", 0.98611, "accuracy", {"lr": 0.0123456, "opt": "sgd"},
                        test_metric=0.975, notes=["epoch 3", "seed 9"])
    assert lines == ["Best trial #4: validation accuracy 0.9861, test accuracy 0.9750 "
                     "(epoch 3, seed 9)", "  lr   0.01235", "  opt  sgd"]
    # A study the tuner did not create has a value, not a metric; a small error its digits.
    assert trial_lines("Trial #1 (complete)", 0.000123, None, {}) == [
        "Trial #1 (complete): value 0.000123"]
    assert trial_lines("Trial #2 (fail)", None, "rmse", {}) == ["Trial #2 (fail): no value"]
