"""Merge the CSVs that several campaign calls returned into the shipped reference data, without touching a value.

Rows are copied verbatim (text in, same text out). For each cell (gpu_family, model, stage, recipe, batch,
height, width) the newest `ok` row wins; a cell that never succeeded keeps its newest failed row, so the reason
it failed stays on record. Files are given oldest first.

    python benchmarks/campaign_merge.py OUT.csv CALL1.csv CALL2.csv ...
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

CELL = ("gpu_family", "model", "stage", "recipe", "batch", "height", "width")


def merge(paths: list[Path]) -> tuple[list[str], list[dict[str, str]]]:
    columns: list[str] = []
    best: dict[tuple[str, ...], dict[str, str]] = {}
    order: list[tuple[str, ...]] = []
    for path in paths:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            for c in reader.fieldnames or []:
                if c not in columns:
                    columns.append(c)
            for row in reader:
                key = tuple(row[c] for c in CELL)
                if key not in best:
                    order.append(key)
                    best[key] = row
                elif row.get("status", "ok") == "ok" or best[key].get("status", "ok") != "ok":
                    best[key] = row
    return columns, [best[k] for k in order]


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__)
        return 2
    out, inputs = Path(argv[1]), [Path(p) for p in argv[2:]]
    columns, rows = merge(inputs)
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    ok = sum(1 for r in rows if r.get("status", "ok") == "ok")
    print(f"{out}: {len(rows)} cells ({ok} ok, {len(rows) - ok} not ok) from {len(inputs)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
