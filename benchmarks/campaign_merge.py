"""Merge the CSVs that several campaign calls returned into the shipped reference data, without touching a value.

Rows are copied verbatim (text in, same text out). For each cell (gpu_family, model, stage, recipe, batch,
height, width) the newest `ok` row wins; a cell that never succeeded keeps its newest failed row, so the reason
it failed stays on record. Files are given oldest first.

    python benchmarks/campaign_merge.py OUT.csv CALL1.csv CALL2.csv ... [--provenance OUT.json] [--withdrawn W.csv]

With --withdrawn, the rows it names (cell and `measured_at`: one measurement, in whichever call's file it was
carried forward) are left out wherever they appear, each with the reason written beside it in that file (a
measurement found to be wrong after it was taken, e.g. eager code timed under a compiled recipe's name). A
withdrawn row is never replaced by hand: the cell is measured again, or it is absent.

With --provenance, the provenance.json beside each input (GPU, driver, CUDA, torch, diffusers, date, weights,
calibration, one entry per call) is gathered, verbatim, into one file keyed by the input's folder, with the
command that made it.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

CELL = ("gpu_family", "model", "stage", "recipe", "batch", "height", "width")
WITHDRAWN = ("gpu_family", "model", "stage", "recipe", "batch", "height", "width", "measured_at")


def load_withdrawn(path: Path) -> dict[tuple[str, ...], str]:
    """(cell..., measured_at) -> reason; every row must say why."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in (*WITHDRAWN, "reason") if c not in (reader.fieldnames or [])]
        if missing:
            raise SystemExit(f"{path}: missing column(s) {missing}; the header needs {[*WITHDRAWN, 'reason']}")
        out: dict[tuple[str, ...], str] = {}
        for i, row in enumerate(reader, start=2):
            if not (row.get("reason") or "").strip():
                raise SystemExit(f"{path}:{i}: a withdrawn row needs a reason")
            out[tuple(row[c] for c in WITHDRAWN)] = row["reason"]
    return out


def merge(
    paths: list[Path], withdrawn: dict[tuple[str, ...], str] | None = None
) -> tuple[list[str], list[dict[str, str]]]:
    withdrawn = withdrawn or {}
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
                if tuple(row.get(c, "") for c in WITHDRAWN) in withdrawn:
                    continue
                key = tuple(row[c] for c in CELL)
                if key not in best:
                    order.append(key)
                    best[key] = row
                elif row.get("status", "ok") == "ok" or best[key].get("status", "ok") != "ok":
                    best[key] = row
    return columns, [best[k] for k in order]


def provenance(inputs: list[Path], command: str) -> dict[str, object]:
    calls: dict[str, object] = {}
    for path in inputs:
        prov = path.parent / "provenance.json"
        if prov.exists():
            calls[f"{path.parent.parent.name}/{path.parent.name}"] = json.loads(prov.read_text(encoding="utf-8"))
    return {
        "description": "Provenance of the merged reference measurements: each device call's own provenance.json "
        "(the campaign's calls on one machine accumulate in its last file), as the device returned it. Merged by "
        f"`{command}` (the newest ok row of each cell; a cell that never succeeded keeps its newest failed row, "
        "with why). Weights are synthetic: latency, memory and power are the real architectures'; quality "
        "columns are numeric drift only.",
        "calls": calls,
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("inputs", type=Path, nargs="+")
    p.add_argument("--provenance", type=Path, default=None, help="also write the gathered provenance here")
    p.add_argument("--withdrawn", type=Path, default=None, help="CSV of measurements to leave out, with why")
    args = p.parse_args(argv[1:])
    out, inputs = args.out, args.inputs
    withdrawn = load_withdrawn(args.withdrawn) if args.withdrawn is not None else {}
    columns, rows = merge(inputs, withdrawn)
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    ok = sum(1 for r in rows if r.get("status", "ok") == "ok")
    print(
        f"{out}: {len(rows)} cells ({ok} ok, {len(rows) - ok} not ok) from {len(inputs)} file(s)"
        + (f"; {len(withdrawn)} measurement(s) withdrawn" if withdrawn else "")
    )
    if args.provenance is not None:
        command = "python benchmarks/campaign_merge.py " + " ".join(str(a) for a in argv[1:])
        args.provenance.write_text(json.dumps(provenance(inputs, command), indent=1) + "\n", encoding="utf-8")
        print(f"{args.provenance}: provenance of {len(inputs)} call(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
