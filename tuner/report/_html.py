"""The report's one HTML page: a summary table on top, then each interactive plot.

plotly.js is embedded once, inline, so the page works offline and can be mailed.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tuner.formatting import cell

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
section { margin: 2em 0; }
.note { color: #666; font-size: 0.9em; }
.caption { color: #444; font-size: 0.9em; margin: 0.3em 0; }
.wide { overflow-x: auto; }
"""


@dataclass(frozen=True)
class Section:
    name: str  # the plot's name: its PNG's file stem
    title: str
    figure: Any  # a plotly figure
    png: str  # the PNG's file name, beside the page
    caption: str = ""  # what the plot shows and leaves out


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(r.get(c)))}</td>" for c in columns)
                   + "</tr>" for r in rows)
    # A study of many parameters makes a wide table: it scrolls, the page does not.
    return f"<div class='wide'><table><tr>{head}</tr>{body}</table></div>"


def render(study: str, summary: Mapping[str, Any], best: Sequence[Mapping[str, Any]],
           metric: str, sections: Sequence[Section], skipped: Sequence[str]) -> str:
    name = html.escape(study)
    counts = ["complete", "pruned", "running", "failed", "waiting"]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>tuner report: {name}"
             f"</title><style>{_STYLE}</style></head><body>",
             f"<h1>Study {name}</h1>",
             _table([summary], ["direction", *counts, "best_value", "created",
                                "last_activity"])]
    if best:
        params = list(dict.fromkeys(p for r in best for p in r["params"]))
        flat = [{**r["params"], **{k: v for k, v in r.items() if k != "params"}} for r in best]
        parts += [f"<h2>Best trials (validation {html.escape(metric)})</h2>",
                  _table(flat, ["number", "value", "test_metric", "best_epoch", "seed",
                                *params])]
    else:
        parts.append("<p class='note'>No complete trial yet.</p>")
    for i, section in enumerate(sections):
        div = section.figure.to_html(full_html=False, include_plotlyjs=(i == 0))
        caption = (f"<p class='caption'>{html.escape(section.caption)}</p>"
                   if section.caption else "")
        parts += [f"<section><h2>{html.escape(section.title)}</h2>{div}{caption}",
                  f"<p class='note'><a href='{html.escape(section.png)}'>PNG</a></p></section>"]
    if skipped:
        items = "".join(f"<li>{html.escape(s)}</li>" for s in skipped)
        parts.append(f"<h2>Left out</h2><ul class='note'>{items}</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
