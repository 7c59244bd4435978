"""The report as one self-contained HTML file: the same tables as the terminal, plots embedded as base64 PNG.

No scripts, no external styles or fonts: the file can be mailed, attached to a ticket or opened offline.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from planner.recommend.views import View

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;
padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px;background:#f5f5f5}
pre{padding:.6rem;overflow-x:auto;white-space:pre-wrap}
table{border-collapse:collapse;margin:.6rem 0 .3rem;font-size:13px}caption{text-align:left;font-weight:600;
padding:.3rem 0}
th,td{border-bottom:1px solid #e3e3e3;padding:.25rem .55rem;vertical-align:top;
white-space:pre-line}th{background:#fafafa;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}tr.total td{font-weight:600;border-top:2px solid #999}
p.note{color:#555;font-size:12.5px;margin:.2rem 0 1rem}figure{margin:1rem 0}figcaption{color:#555;font-size:12.5px}
img{max-width:100%;height:auto}
div.lead{border-left:6px solid #2a7d2a;background:#f3faf3;padding:.5rem .9rem;margin:.8rem 0}
div.lead.risk{border-left-color:#b3261e;background:#fdf1f0}div.lead p{margin:.25rem 0}
ul.warnings li{margin:.3rem 0}
"""


@dataclass(frozen=True)
class Figure:
    """A plot for the report: PNG bytes and a sentence saying how to read it."""

    title: str
    png: bytes
    caption: str


def table_html(view: View) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in view.columns)
    body = []
    for i, row in enumerate(view.rows):
        cells = "".join(
            f'<td class="num">{html.escape(v)}</td>' if j in view.right else f"<td>{html.escape(v)}</td>"
            for j, v in enumerate(row)
        )
        body.append(f'<tr class="total">{cells}</tr>' if i in view.totals else f"<tr>{cells}</tr>")
    caption = f'<p class="note">{html.escape(view.caption)}</p>' if view.caption else ""
    return (
        f"<table><caption>{html.escape(view.title)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>{caption}"
    )


def figure_html(fig: Figure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(fig.title)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(fig.caption)}</figcaption></figure>"
    )


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def render(
    *,
    title: str,
    command: str,
    context_lines: Sequence[str],
    sections: Sequence[tuple[str, Sequence[View], Sequence[Figure]]],
    generated: datetime | None = None,
    lead_lines: Sequence[str] = (),
    risky: bool = False,
    section_notes: dict[str, Sequence[str]] | None = None,
) -> str:
    """The whole page: header (command line, data), the lead (what the plan rests on and costs: red where it
    rests on estimates), then each section's notes (as a list), tables and figures; sections carry ids."""
    when = (generated or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">Generated {when} by <code>{html.escape(command)}</code></p>',
        "".join(f'<p class="note">{html.escape(line)}</p>' for line in context_lines),
    ]
    if lead_lines:
        cls = "lead risk" if risky else "lead"
        parts.append(
            f'<div class="{cls}" id="lead">' + "".join(f"<p>{html.escape(line)}</p>" for line in lead_lines) + "</div>"
        )
    notes = section_notes or {}
    for heading, views, figures in sections:
        parts.append(f'<h2 id="{_slug(heading)}">{html.escape(heading)}</h2>')
        if notes.get(heading):
            parts.append(
                '<ul class="warnings">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes[heading]) + "</ul>"
            )
        parts.extend(table_html(v) for v in views)
        parts.extend(figure_html(f) for f in figures)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
