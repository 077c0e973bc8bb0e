"""Turning rows into text: an aligned table, CSV or JSON. One pure function.

A table given a ``width`` fits it: columns are as wide as their cells, numbers aligned
right; when that is too wide, long headers break after an underscore (``best_`` over
``epoch``); when it still is, the columns go on in further blocks below, each block
repeating the first column(s) so that a row can be followed (as pandas prints a wide
frame). CSV and JSON always carry every column, exactly.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

FORMATS = ("table", "csv", "json")
GAP = "  "  # between table columns


def cell(value: Any, exact: bool = False) -> str:
    """Text for one cell: rounded for reading, or exact (``repr``) for CSV round-trips."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value) if exact else f"{value:.6g}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _header_lines(name: str, width: int) -> list[str]:
    """``name`` broken after its underscores into lines of at most ``width`` (a part
    longer than that stays whole)."""
    parts = [p + "_" for p in name.split("_")]
    parts[-1] = parts[-1][:-1]
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + len(part) <= width:
            lines[-1] += part
        else:
            lines.append(part)
    return lines


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(width - 1, 0)] + "…"


def _block(columns: Sequence[str], cells: Sequence[Sequence[str]], right: Sequence[bool],
           widths: Sequence[int], headers: Sequence[list[str]]) -> list[str]:
    def line(values: Sequence[str]) -> str:
        return GAP.join(v.rjust(w) if r else v.ljust(w)
                        for v, w, r in zip(values, widths, right, strict=True)).rstrip()

    depth = max(len(h) for h in headers)
    # Headers sit on the rule, as numbers sit on the right: bottom-aligned, so each
    # column's last line is its name's end.
    padded = [[""] * (depth - len(h)) + h for h in headers]
    lines = [line([h[i] for h in padded]) for i in range(depth)]
    lines.append(GAP.join("-" * w for w in widths))
    lines += [line([row[i] for i in range(len(columns))]) for row in cells]
    return lines


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], width: int | None,
           repeat: int) -> str:
    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    right = [any(_is_number(r.get(c)) for r in rows)
             and all(r.get(c) is None or _is_number(r.get(c)) for r in rows) for c in columns]
    body = [max((len(row[i]) for row in cells), default=0) for i in range(len(columns))]
    widths = [max(len(c), b) for c, b in zip(columns, body, strict=True)]
    headers = [[c] for c in columns]

    def total(ws: Sequence[int]) -> int:
        return sum(ws) + len(GAP) * (len(ws) - 1)

    if width is not None and columns and total(widths) > width:
        # Narrower: headers no wider than their cells, broken at underscores; those that
        # gain the most first, and only as many as it takes.
        narrow = [max(b, max(len(p) for p in _header_lines(c, b)))
                  for c, b in zip(columns, body, strict=True)]
        for i in sorted(range(len(columns)), key=lambda i: narrow[i] - widths[i]):
            if total(widths) <= width:
                break
            if narrow[i] < widths[i]:
                widths[i] = narrow[i]
                headers[i] = _header_lines(columns[i], narrow[i])
    if width is None or not columns or total(widths) <= width:
        return "\n".join(_block(columns, cells, right, widths, headers)) + "\n"

    # Still too wide: blocks of columns, each led by the first `repeat` columns.
    lead = list(range(min(repeat, len(columns) - 1)))
    room = width - (total([widths[i] for i in lead]) + len(GAP) if lead else 0)
    room = max(room, 8)
    blocks: list[list[int]] = [[]]
    for i in range(len(lead), len(columns)):
        used = total([widths[j] for j in blocks[-1]]) if blocks[-1] else -len(GAP)
        if blocks[-1] and used + len(GAP) + widths[i] > room:
            blocks.append([])
        blocks[-1].append(i)
    out: list[str] = []
    for block in blocks:
        index = lead + block
        # A column wider than the room alone is cut, with an ellipsis.
        ws = [widths[i] if i in lead else min(widths[i], room) for i in index]
        block_cells = [[_shorten(row[i], w) for i, w in zip(index, ws, strict=True)]
                       for row in cells]
        hs = [[_shorten(h, w) for h in headers[i]] for i, w in zip(index, ws, strict=True)]
        if out:
            out.append("")
        out += _block([columns[i] for i in index], block_cells, [right[i] for i in index],
                      ws, hs)
    return "\n".join(out) + "\n"


def format_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], fmt: str, *,
                width: int | None = None, repeat: int = 1) -> str:
    """Render ``rows`` (mappings) with ``columns`` as ``table``, ``csv`` or ``json``.

    A table fits ``width`` characters when one is given (see the module's docstring;
    ``repeat`` is how many leading columns each further block repeats); None: one line
    per row, however long.

    >>> print(format_rows([{"a": 1, "b": 0.5}], ["a", "b"], "csv"), end="")
    a,b
    1,0.5
    """
    if fmt == "json":
        return json.dumps([{c: _json_value(r.get(c)) for c in columns} for r in rows],
                          indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow([cell(r.get(c), exact=True) for c in columns])
        return out.getvalue()
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    return _table(rows, columns, width, repeat)


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``count`` and ``noun``, the noun plural unless the count is one.

    >>> plural(1, "trial"), plural(3, "trial"), plural(0, "process", "processes")
    ('1 trial', '3 trials', '0 processes')
    """
    return f"{count} {noun if count == 1 else many or noun + 's'}"
