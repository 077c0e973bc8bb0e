"""Turning rows into text: an aligned table, CSV or JSON. One pure function."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

FORMATS = ("table", "csv", "json")


def _cell(value: Any, exact: bool = False) -> str:
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


def format_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], fmt: str) -> str:
    """Render ``rows`` (mappings) with ``columns`` as ``table``, ``csv`` or ``json``.

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
            writer.writerow([_cell(r.get(c), exact=True) for c in columns])
        return out.getvalue()
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=False)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)).rstrip()
              for row in cells]
    return "\n".join(lines) + "\n"
