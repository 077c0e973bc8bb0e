"""Reading the tables the CLI prints back into rows, for the tests (not a tuner module).

A table is one or more blocks separated by blank lines; each block has header lines (a
name may be broken over several), a rule of dashes that marks each column's span, and one
line per row. Blocks after the first repeat the leading column(s). Under the table, a
line "Same in all N trials: a=1, b=x" may name the parameters left out of it.
"""

from __future__ import annotations

import re

SAME = re.compile(r"^Same in all (\d+) trials: (.*)$", re.S)


def _spans(rule: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"-+", rule)]


def _block(lines: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    at = next(i for i, line in enumerate(lines) if line and set(line) <= {"-", " "})
    spans = _spans(lines[at])
    names = ["".join(h[s:e].strip() for h in lines[:at]) for s, e in spans]
    rows = [{n: line[s:e].strip() for n, (s, e) in zip(names, spans, strict=True)}
            for line in lines[at + 1:]]
    return names, rows


def read_table(text: str) -> tuple[list[str], list[dict[str, str]], dict[str, str]]:
    """The columns (in order, each once), the rows (column -> cell text) and the
    parameters named as the same in all rows (name -> value text)."""
    lines = text.rstrip("\n").split("\n")
    same: dict[str, str] = {}
    for i, line in enumerate(lines):
        if line.startswith("Same in all "):
            match = SAME.match(" ".join(x.strip() for x in lines[i:]))
            assert match, lines[i:]
            same = dict(pair.split("=", 1) for pair in match.group(2).split(", "))
            lines = lines[:i]
            break
    blocks: list[list[str]] = [[]]
    for line in lines:
        if line == "":
            blocks.append([])
        else:
            blocks[-1].append(line)
    columns: list[str] = []
    rows: list[dict[str, str]] = []
    for block in blocks:
        names, block_rows = _block(block)
        if not rows:
            rows = block_rows
        assert len(block_rows) == len(rows), "every block has every row"
        for row, part in zip(rows, block_rows, strict=True):
            for name, cell in part.items():
                assert row.setdefault(name, cell) == cell, "a repeated column is the same"
        columns += [n for n in names if n not in columns]
    return columns, rows, same
