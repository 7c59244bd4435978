"""Read and write the measurements CSV contract, reporting every bad row by line and field."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from planner.core.errors import InputError
from planner.measurements.contract import ALL_COLUMNS, CONTRACT_COLUMNS, MeasurementRow, float_text

MAX_REPORTED_ERRORS = 50


@dataclass(frozen=True)
class LocatedRow:
    """A validated row and the line of the file it came from (for errors found later, against the store)."""

    line: int
    row: MeasurementRow


@dataclass(frozen=True)
class RowError:
    """One problem in a file: where (line, field) and what."""

    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}, field {self.field}: {self.message}"


class CsvValidationError(InputError):
    """A measurements file has bad rows; nothing from it was stored."""

    def __init__(self, path: str, errors: Sequence[RowError]) -> None:
        self.path = path
        self.errors = list(errors)
        shown = "\n".join(f"  {e}" for e in self.errors[:MAX_REPORTED_ERRORS])
        more = len(self.errors) - MAX_REPORTED_ERRORS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(
            f"{path}: {len(self.errors)} invalid row(s); nothing from this file was stored.\n{shown}{tail}\n"
            "Fix the rows named above (the contract is in DESIGN.md, 'Measurements CSV') and import again."
        )


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip()
    return text or None


def parse_rows(stream: IO[str], *, name: str = "<stream>") -> list[LocatedRow]:
    """Parse and validate a whole CSV; raise CsvValidationError listing every bad row, or return all rows."""
    reader = csv.DictReader(stream)
    header = reader.fieldnames
    if header is None:
        raise CsvValidationError(name, [RowError(1, "header", "the file is empty; expected a header row")])
    columns = [h.strip() for h in header]
    missing = [c for c in CONTRACT_COLUMNS if c not in columns]
    if missing:
        raise CsvValidationError(
            name,
            [RowError(1, c, "missing column (the contract's thirteen columns are required)") for c in missing],
        )
    rows: list[LocatedRow] = []
    errors: list[RowError] = []
    seen: dict[tuple[str | None, tuple[str, str, str, str, int, int, int]], int] = {}
    for raw in reader:
        line = reader.line_num
        if None in raw:
            errors.append(
                RowError(line, "row", f"has {len(columns) + len(raw[None])} fields, header has {len(columns)}")
            )
            continue
        values = {k.strip(): _clean(v) for k, v in raw.items() if k is not None}
        absent = [c for c in CONTRACT_COLUMNS if values.get(c) is None and c in _REQUIRED]
        if absent:
            errors.extend(RowError(line, c, "is empty") for c in absent)
            continue
        data = {k: v for k, v in values.items() if k in ALL_COLUMNS and v is not None}
        try:
            row = MeasurementRow.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"]) or _field_from_message(err["msg"])
                errors.append(RowError(line, loc, _message(err["msg"], err.get("input"))))
            continue
        key = (row.probe_run, row.cell)
        if key in seen:
            errors.append(
                RowError(line, "cell", f"duplicates the cell of line {seen[key]} (one measurement per cell per run)")
            )
            continue
        seen[key] = line
        rows.append(LocatedRow(line, row))
    if errors:
        raise CsvValidationError(name, errors)
    return rows


_REQUIRED = ("gpu_family", "model", "stage", "recipe", "batch", "height", "width", "weights", "source")


def _field_from_message(msg: str) -> str:
    # Model-level validators prefix their message with the field they are about ("latency_ms: ...").
    head = msg.removeprefix("Value error, ").split(":", 1)[0]
    return head if head in ALL_COLUMNS else "row"


def _message(msg: str, value: object) -> str:
    text = msg.removeprefix("Value error, ")
    if isinstance(value, str) and value.strip().lower() in {"nan", "inf", "-inf", "infinity"}:
        text = f"{text} (got {value!r}; NaN and infinity are not measurements)"
    elif isinstance(value, str | int | float) and ":" not in text:
        text = f"{text} (got {value!r})"
    return text


def read_csv(path: str | Path) -> list[LocatedRow]:
    """Read a measurements file from disk."""
    p = Path(path)
    try:
        # utf-8-sig: Excel's "CSV UTF-8" starts the file with a byte-order mark, which would else glue itself to
        # the first column's name (`\ufeffgpu_family`) and make it "missing".
        with p.open(newline="", encoding="utf-8-sig") as fh:
            return parse_rows(fh, name=str(p))
    except FileNotFoundError as exc:
        raise InputError(f"{p}: no such file; give the path of a measurements CSV") from exc
    except IsADirectoryError as exc:
        raise InputError(f"{p}: is a directory; give the path of a measurements CSV file in it") from exc
    except OSError as exc:  # permissions, a device, ...: say so rather than print a traceback
        raise InputError(f"{p}: cannot read it ({exc.strerror or exc}); give a readable measurements CSV") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: not UTF-8 text ({exc}); save the file as UTF-8 CSV") from exc


def format_value(value: object) -> str:
    """A value as the CSV holds it (floats to 6 significant places): also how two rows are compared."""
    if value is None:
        return ""
    if isinstance(value, float):
        return float_text(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()  # type: ignore[no-any-return]
    return str(value)


def write_rows(rows: Iterable[MeasurementRow], stream: IO[str], *, columns: Sequence[str] = ALL_COLUMNS) -> int:
    """Write rows in contract order (contract columns first); return how many were written."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(columns)
    count = 0
    for row in rows:
        writer.writerow([format_value(getattr(row, c)) for c in columns])
        count += 1
    return count


def rows_to_csv(rows: Iterable[MeasurementRow]) -> str:
    buf = io.StringIO()
    write_rows(rows, buf)
    return buf.getvalue()
