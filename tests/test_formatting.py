"""format_rows: table, CSV and JSON from the same rows."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime

import pytest

from tuner.formatting import FORMATS, format_rows

COLUMNS = ["number", "state", "value", "started", "optimizer", "note"]
ROWS = [
    {"number": 0, "state": "complete", "value": 0.9333333373069763,
     "started": datetime(2026, 1, 2, 3, 4, 5, 678901), "optimizer": "adam", "note": None},
    {"number": 1, "state": "pruned", "value": None,
     "started": datetime(2026, 1, 2, 3, 5, 0), "optimizer": "momentum", "note": "a, \"b\""},
    {"number": 12, "state": "complete", "value": 1.5e-7, "started": None,
     "optimizer": "sgd", "extra": "not a column"},
]


def test_formats() -> None:
    assert FORMATS == ("table", "csv", "json")


def test_json_round_trips() -> None:
    parsed = json.loads(format_rows(ROWS, COLUMNS, "json"))
    assert len(parsed) == len(ROWS)
    for out, row in zip(parsed, ROWS, strict=True):
        assert list(out) == COLUMNS  # exactly the columns, in order; missing ones are null
        for column in COLUMNS:
            value = row.get(column)
            expected = value.isoformat() if isinstance(value, datetime) else value
            assert out[column] == expected
    # Timestamps parse back to the same instant.
    assert datetime.fromisoformat(parsed[0]["started"]) == ROWS[0]["started"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_json_non_finite_is_null(value: float) -> None:
    text = format_rows([{"v": value, "w": 1.0}], ["v", "w"], "json")
    assert "NaN" not in text and "Infinity" not in text
    # Strict JSON (what jq and browsers read): no NaN or Infinity tokens.
    parsed = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert parsed == [{"v": None, "w": 1.0}]


def test_json_keeps_types() -> None:
    parsed = json.loads(format_rows([{"b": True, "i": 3, "s": "x"}], ["b", "i", "s"], "json"))
    assert parsed == [{"b": True, "i": 3, "s": "x"}]


def test_csv_round_trips() -> None:
    reader = csv.reader(io.StringIO(format_rows(ROWS, COLUMNS, "csv")))
    header, *cells = list(reader)
    assert header == COLUMNS
    assert len(cells) == len(ROWS)
    assert [int(c[0]) for c in cells] == [0, 1, 12]
    assert [c[1] for c in cells] == ["complete", "pruned", "complete"]
    assert cells[1][2] == ""  # None is an empty cell
    assert cells[1][5] == "a, \"b\""  # commas and quotes survive quoting
    assert cells[0][5] == ""
    assert [c[4] for c in cells] == ["adam", "momentum", "sgd"]
    assert datetime.fromisoformat(cells[1][3]) == ROWS[1]["started"]


def test_csv_floats_read_back_exactly() -> None:
    """CSV is the machine-readable format (pandas reads it back): a float read from it
    must be the float that was written, as with JSON."""
    values = [0.9333333373069763, 0.060749960734256966, 1.5e-7, 123456789.125, 0.1]
    text = format_rows([{"v": v} for v in values], ["v"], "csv")
    read = [float(row["v"]) for row in csv.DictReader(io.StringIO(text))]
    assert read == values


def test_csv_empty_rows_is_the_header() -> None:
    assert format_rows([], ["a", "b"], "csv") == "a,b\n"


def test_table_is_aligned() -> None:
    text = format_rows(ROWS, COLUMNS, "table")
    assert text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == 2 + len(ROWS)
    header, rule, *body = lines
    assert header.split() == COLUMNS
    assert set(rule) == {"-", " "}
    # Every column starts at the same offset on every line: where the rule's dashes start.
    starts = [i for i, ch in enumerate(rule) if ch == "-" and (i == 0 or rule[i - 1] == " ")]
    assert len(starts) == len(COLUMNS)
    for line in [header, *body]:
        for start in starts[1:]:
            assert len(line) < start or line[start - 1] == " "
    assert all(line == line.rstrip() for line in lines)
    # Cells: floats shortened, None blank, timestamps to the second.
    assert body[0].split()[:3] == ["0", "complete", "0.933333"]
    assert "2026-01-02 03:04:05" in body[0]
    assert body[1].split()[:3] == ["1", "pruned", "2026-01-02"]
    assert "1.5e-07" in body[2]
    assert "not a column" not in text


def test_table_empty_rows_is_header_and_rule() -> None:
    assert format_rows([], ["a", "bb"], "table").splitlines() == ["a  bb", "-  --"]


def test_table_nan_is_visible() -> None:
    assert "nan" in format_rows([{"v": math.nan}], ["v"], "table")


def test_json_empty_rows() -> None:
    assert json.loads(format_rows([], ["a"], "json")) == []


def test_unknown_format_raises() -> None:
    with pytest.raises(ValueError,
                       match=r"unknown format 'xml'; expected one of: table, csv, json"):
        format_rows(ROWS, COLUMNS, "xml")


def test_format_rows_is_pure() -> None:
    rows = [dict(r) for r in ROWS]
    for fmt in FORMATS:
        assert format_rows(rows, COLUMNS, fmt) == format_rows(rows, COLUMNS, fmt)
    assert rows == ROWS
