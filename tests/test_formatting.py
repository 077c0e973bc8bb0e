"""format_rows: table, CSV and JSON from the same rows."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime

import pytest
from table_reader import read_table

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


# --- tables that fit a width ---------------------------------------------------------------------

WIDE_COLUMNS = ["number", "value", "best_epoch", "dropout_kind", "learning_rate", *(
    f"knob_{i}" for i in range(8))]
WIDE_ROWS = [{"number": n, "value": 0.5 + n / 7, "best_epoch": n % 4,
              "dropout_kind": "gaussian" if n % 2 else "bernoulli",
              "learning_rate": 10.0 ** -n, **{f"knob_{i}": i * n / 3 for i in range(8)}}
             for n in range(5)]


def _lines(text: str) -> list[str]:
    return text.rstrip("\n").split("\n")


def test_table_without_a_width_is_one_line_per_row() -> None:
    lines = _lines(format_rows(WIDE_ROWS, WIDE_COLUMNS, "table"))
    assert len(lines) == 2 + len(WIDE_ROWS)
    assert lines[0].split() == WIDE_COLUMNS


@pytest.mark.parametrize("width", [40, 60, 90, 130])
def test_table_fits_the_width_and_keeps_every_cell(width: int) -> None:
    text = format_rows(WIDE_ROWS, WIDE_COLUMNS, "table", width=width)
    assert max(len(line) for line in _lines(text)) <= width
    # Read back (headers rejoined, blocks joined on their rows), it is the unfitted table.
    assert read_table(text) == read_table(format_rows(WIDE_ROWS, WIDE_COLUMNS, "table"))
    columns, rows, _ = read_table(text)
    assert columns == WIDE_COLUMNS
    assert [int(r["number"]) for r in rows] == [r["number"] for r in WIDE_ROWS]


def test_table_breaks_headers_before_it_splits_columns() -> None:
    natural = _lines(format_rows(WIDE_ROWS, WIDE_COLUMNS, "table"))
    width = len(natural[1]) - 4  # a little narrower than one line per row
    lines = _lines(format_rows(WIDE_ROWS, WIDE_COLUMNS, "table", width=width))
    assert "" not in lines  # one block
    assert len(lines) == 3 + len(WIDE_ROWS)  # a header of two lines
    assert "best_" in lines[0] and "epoch" in lines[1]
    assert "knob_0" in lines[1]  # the others stay whole


def test_table_blocks_repeat_the_leading_columns() -> None:
    text = format_rows(WIDE_ROWS, WIDE_COLUMNS, "table", width=50, repeat=2)
    blocks = text.rstrip("\n").split("\n\n")
    assert len(blocks) > 1
    for block in blocks:
        body = _lines(block)[-len(WIDE_ROWS):]
        assert [line.split()[:2] for line in body] == [
            [str(r["number"]), f"{r['value']:.6g}"] for r in WIDE_ROWS]
    assert read_table(text)[0] == WIDE_COLUMNS


def test_table_numbers_align_right_text_left() -> None:
    rows = [{"n": 1, "s": "a"}, {"n": 100, "s": "bbb"}]
    assert _lines(format_rows(rows, ["n", "s"], "table")) == [
        "  n  s", "---  ---", "  1  a", "100  bbb"]


def test_a_cell_wider_than_the_width_is_cut() -> None:
    rows = [{"n": 1, "path": "x" * 200}]
    lines = _lines(format_rows(rows, ["n", "path"], "table", width=50))
    assert max(map(len, lines)) <= 50
    assert lines[-1].endswith("…")
