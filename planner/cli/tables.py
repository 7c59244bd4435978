"""Plain tables (title, columns, rows of text) on the terminal, at widths that fit it.

Every CLI table goes through here so that all of them behave alike on a narrow terminal: text wraps between
words, a number or an id is never split or cut, and a table that cannot fit even so prints one record per
row. The width is the console's (`COLUMNS`, or 80 when the output is not a terminal).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

Rows = Sequence[Sequence[str]]


def _longest_word(text: str) -> int:
    return max((len(w) for w in text.split()), default=0)


def column_widths(
    columns: Sequence[str], rows: Rows, width: int, *, whole: Collection[int] = (), gap: int = 2
) -> list[int] | None:
    """Widths that fit `width`: every column at its natural width when the table fits; else each at its
    narrowest (a `whole` column its longest cell, another its longest word, a header its longest word), the
    room left shared among the columns that can wrap, in proportion to what they lack. None when even the
    narrowest widths do not fit."""
    cols = range(len(columns))
    natural = [
        max(len(line) for cell in (columns[i], *(r[i] for r in rows)) for line in cell.splitlines() or [""])
        for i in cols
    ]
    narrowest = [
        max(
            _longest_word(columns[i]),
            max((len(r[i]) if i in whole else min(_longest_word(r[i]), 24) for r in rows), default=0),
        )
        for i in cols
    ]
    room = width - gap * (len(columns) - 1)
    if sum(natural) <= room:
        return natural
    widths = list(narrowest)
    left = room - sum(widths)
    if left < 0:
        return None
    lack = [natural[i] - widths[i] for i in cols]
    total_lack = sum(lack)
    if left > 0 and total_lack > 0:
        for i in cols:
            widths[i] += left * lack[i] // total_lack
    return widths


def render_table(
    title: str,
    columns: Sequence[str],
    rows: Rows,
    *,
    out: Console,
    right: Collection[int] = (),
    whole: Collection[int] = (),
    totals: Collection[int] = (),
    caption: str = "",
) -> None:
    """Numbers (`right`) right-aligned and never split, like the ids in `whole`; total rows bold under a rule."""
    out.print(Text(title, style="bold"), soft_wrap=True)
    widths = column_widths(columns, rows, out.width, whole={*right, *whole})
    if widths is None:
        _render_records(columns, rows, out, totals)
    else:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
        for i, (col, w) in enumerate(zip(columns, widths, strict=True)):
            table.add_column(Text(col), justify="right" if i in right else "left", overflow="fold", width=w)
        for i, row in enumerate(rows):
            if i in totals and i > 0:
                table.rows[-1].end_section = True
            table.add_row(*(Text(cell) for cell in row), style="bold" if i in totals else None)
        out.print(table)
    if caption:
        out.print(Text(caption, style="dim"), soft_wrap=True)


def _render_records(columns: Sequence[str], rows: Rows, out: Console, totals: Collection[int]) -> None:
    """A table too wide for the terminal, one record per row: its first cell as a heading, then one line per
    other column (empty cells left out). Cells are Text, never markup: `[te+dn]` is a topology, not a style."""
    for i, row in enumerate(rows):
        out.print(Text(f"{columns[0]} {row[0]}".strip(), style="bold" if i in totals else "underline"))
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column(overflow="fold")
        for col, cell in zip(columns[1:], row[1:], strict=True):
            if cell:
                grid.add_row(Text(col), Text(cell))
        out.print(grid)
        if i < len(rows) - 1:
            out.print()
