"""Plain tables (title, columns, rows of text) on the terminal, at widths that fit it.

Every CLI table goes through here so that all of them behave alike on a narrow terminal: rich fits the columns
(text wraps between words, a number or an id is never split or cut), and a table whose narrowest columns do not
fit even so prints one record per row. The width is the console's (`COLUMNS`, or 80 when not a terminal).
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Sequence

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

Rows = Sequence[Sequence[str]]


def fit_table(columns: Sequence[str], rows: Rows, *, right: Collection[int] = (), whole: Collection[int] = ()) -> Table:
    """A table rich fits to the console: a column in `whole` (and a number, `right`) never narrower than its
    longest cell and never wrapped; the others wrap between words (folding a word longer than the column)."""
    keep = {*right, *whole}
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for i, col in enumerate(columns):
        longest = max((len(r[i]) for r in rows), default=0)
        table.add_column(
            Text(col),
            justify="right" if i in right else "left",
            no_wrap=i in keep,
            min_width=longest if i in keep else None,
            overflow="fold",
        )
    return table


def fits(table: Table, out: Console) -> bool:
    """Whether the table fits the console with every column at least its narrowest (else: records)."""
    unbounded = out.options.update_width(sys.maxsize)  # measured at the console's width, the minimum is capped by it
    return Measurement.get(out, unbounded, table).minimum <= out.width


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
    table = fit_table(columns, rows, right=right, whole=whole)
    for i, row in enumerate(rows):
        if i in totals and i > 0:
            table.rows[-1].end_section = True
        table.add_row(*(Text(cell) for cell in row), style="bold" if i in totals else None)
    if fits(table, out):
        out.print(table)
    else:
        _render_records(columns, rows, out, totals)
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
