"""Counted nouns in messages: "1 trial", "3 trials"."""

from __future__ import annotations


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``count`` and ``noun``, the noun plural unless the count is one.

    >>> plural(1, "trial"), plural(3, "trial"), plural(0, "process", "processes")
    ('1 trial', '3 trials', '0 processes')
    """
    return f"{count} {noun if count == 1 else many or noun + 's'}"
