"""Results out: the planner's ProbeRunIn body (docs/api.md) and the measurements CSV (DESIGN.md contract 1).

The CSV is rewritten atomically after every cell, so a sweep killed at any point leaves a valid file that
the next run resumes from (cells already in it are skipped).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.calibrate import CalibrationResult
from agent.target import Target
from planner.measurements.contract import MeasurementRow
from planner.measurements.csvio import read_csv, write_rows


def json_safe(value: Any) -> Any:
    """Strict JSON for the API. Rows are already in the contract's form (an infinite PSNR, identical outputs,
    is PSNR_CAP: planner/measurements/contract.py), so an infinity left here is a bug, refused with ValueError
    (the spool keeps such a run aside); NaN never is a measurement and becomes null."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            raise ValueError(f"{value} is not a number the planner accepts (JSON has no infinity)")
        return value
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def probe_run_body(
    *,
    run_id: str,
    host_id: str | None,
    kind: str,
    target: Target,
    weights: str | None,
    started_at: datetime,
    rows: Sequence[MeasurementRow] = (),
    calibrations: Sequence[CalibrationResult] = (),
) -> dict[str, Any]:
    """One submission: all of it is stored or none (the planner's transaction)."""
    body = {
        "id": run_id,
        "host_id": host_id,
        "kind": kind,
        "gpu_uuid": target.gpu.uuid if target.gpu else None,
        "gpu_family": target.family_id,
        "weights": weights,
        "provenance": target.provenance(),
        "started_at": started_at.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "measurements": [r.model_dump(mode="json", exclude_none=True) for r in rows],
        "calibrations": [c.to_api() for c in calibrations],
    }
    safe: dict[str, Any] = json_safe(body)
    return safe


def load_existing(path: Path) -> list[MeasurementRow]:
    """Rows of a previous (partial) run's CSV, validated; none if the file does not exist."""
    if not path.exists():
        return []
    return [located.row for located in read_csv(path)]


def write_csv_atomic(path: Path, rows: Iterable[MeasurementRow]) -> int:
    """Write the whole file to a temporary name and rename it over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            count = write_rows(rows, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file under a temporary (hidden) name and rename it over the target: a reader, or a copy of
    the folder taken meanwhile, sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CsvSink:
    """Keeps the rows of a sweep (previous ones first) and rewrites the CSV after each new row."""

    def __init__(self, path: Path, previous: Sequence[MeasurementRow] = ()) -> None:
        self.path = path
        self.rows: list[MeasurementRow] = list(previous)

    def __call__(self, row: MeasurementRow) -> None:
        self.rows.append(row)
        write_csv_atomic(self.path, self.rows)
